// perceiver_run DIR --q q.npy --k k.npy --v v.npy [--mask m.npy] --out out.npy [--repeat N] [--threads N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <optional>

#include "../src/npy.hpp"
#include "perceiver/runtime.hpp"

int main(int argc, char** argv) {
  const char* usage =
      "usage: perceiver_run DIR --q q.npy --k k.npy --v v.npy [--mask m.npy] --out out.npy [--repeat N] [--threads N]\n";
  if (argc < 2) {
    std::cerr << usage;
    return 2;
  }
  std::map<std::string, std::string> args;
  for (int i = 2; i < argc; ++i) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0 || i + 1 >= argc) {
      std::cerr << usage;
      return 2;
    }
    args[key.substr(2)] = argv[++i];
  }
  for (const char* required : {"q", "k", "v", "out"})
    if (!args.count(required)) {
      std::cerr << "missing --" << required << "\n" << usage;
      return 2;
    }
  try {
    perceiver::Options options;
    if (args.count("threads")) options.intra_op_threads = std::stoi(args["threads"]);
    perceiver::Runtime runtime(argv[1], options);
    auto q = perceiver::npy::load(args["q"]), k = perceiver::npy::load(args["k"]), v = perceiver::npy::load(args["v"]);
    std::optional<perceiver::npy::Array> mask;
    if (args.count("mask")) mask = perceiver::npy::load(args["mask"]);
    const auto mask_view = mask ? std::optional<perceiver::TensorView>(mask->view()) : std::nullopt;
    const int repeat = args.count("repeat") ? std::max(1, std::stoi(args["repeat"])) : 1;
    std::vector<double> ms;
    perceiver::Tensor out;
    for (int i = 0; i < repeat; ++i) {
      auto start = std::chrono::steady_clock::now();
      out = runtime.run(q.view(), k.view(), v.view(), mask_view ? &*mask_view : nullptr);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    perceiver::npy::save(args["out"], out.dtype, out.shape, out.bytes.data(), out.bytes.size());
    std::sort(ms.begin(), ms.end());
    std::printf("latency over %d run(s): median %.3f ms, min %.3f ms, max %.3f ms\n", repeat, ms[ms.size() / 2], ms.front(), ms.back());
    return 0;
  } catch (const perceiver::InputError& e) {
    std::cerr << "error (InputError): " << e.what() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 3;
  }
}
