// Load an exported artifact and run it: the "Embedding in C++" example of the README.
#include <perceiver/runtime.hpp>

#include <algorithm>
#include <iostream>
#include <memory>
#include <vector>

int main(int argc, char** argv) {
  perceiver::Runtime model(argv[1], {/*intra_op_threads=*/2, /*providers=*/{}});
  const int64_t dim = std::stoll(model.contract().inputs[0].dims.back());
  const int64_t batch = 2, q_len = 8, k_len = 5, v_len = 3;
  std::vector<float> q(batch * q_len * dim, 0.5f), k(batch * k_len * dim, 1.0f), v(batch * v_len * dim, -1.0f);
  std::unique_ptr<bool[]> mask(new bool[batch * (k_len + v_len)]);
  std::fill_n(mask.get(), batch * (k_len + v_len), true);
  perceiver::TensorView m{perceiver::DType::Bool, {batch, k_len + v_len}, mask.get()};
  try {
    perceiver::Tensor out = model.run({perceiver::DType::Float32, {batch, q_len, dim}, q.data()},
                                      {perceiver::DType::Float32, {batch, k_len, dim}, k.data()},
                                      {perceiver::DType::Float32, {batch, v_len, dim}, v.data()}, &m);
    std::cout << "out[0] = " << out.as<float>()[0] << " of " << out.numel() << " values\n";
  } catch (const perceiver::InputError& e) {  // a shape, dtype or length the artifact does not accept
    std::cerr << e.what() << "\n";
    return 1;
  }
}
