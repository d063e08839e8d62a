// The I/O contract read from manifest.json, and the input check shared with the Python runners
// (perceiver_export/contract.py): same order of checks, same messages.
#include <sstream>

#include "perceiver/runtime.hpp"

namespace perceiver {

namespace {

std::vector<std::string> terms_of(const std::string& dim) {
  std::vector<std::string> out;
  std::stringstream ss(dim);
  std::string part;
  while (std::getline(ss, part, '+')) {
    auto b = part.find_first_not_of(' ');
    auto e = part.find_last_not_of(' ');
    out.push_back(part.substr(b, e - b + 1));
  }
  return out;
}

bool is_number(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

// Python's tuple repr: (2, 7, 16) and (5,).
std::string shape_repr(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) s += ",";
  return s + ")";
}

std::string describe(const TensorSpec& spec) {
  std::string s = "(";
  for (std::size_t i = 0; i < spec.dims.size(); ++i) s += (i ? ", " : "") + spec.dims[i];
  return s + ")";
}

const AxisRange& axis_range(const Contract& c, const std::string& axis) {
  for (const auto& [name, r] : c.axes)
    if (name == axis) return r;
  throw ArtifactError("contract has no axis '" + axis + "'");
}

}  // namespace

std::string dtype_name(DType d) {
  switch (d) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Bool: return "bool";
  }
  return "?";
}

std::size_t dtype_size(DType d) { return d == DType::Float32 ? 4 : d == DType::Bool ? 1 : 2; }

std::size_t Tensor::numel() const { return bytes.size() / dtype_size(dtype); }

std::map<std::string, int64_t> Contract::check_inputs(const std::map<std::string, const TensorView*>& feeds) const {
  std::map<std::string, std::pair<int64_t, std::string>> sizes;  // axis -> (length, input that set it)
  struct Sum { std::string input, dim; int64_t n; };
  std::vector<Sum> sums;
  for (const auto& [name, view] : feeds) {
    bool known = false;
    for (const auto& s : inputs) known |= s.name == name;
    if (!known) {
      std::string names;
      for (std::size_t i = 0; i < inputs.size(); ++i) names += (i ? ", " : "") + inputs[i].name;
      throw InputError("unknown input '" + name + "': expected one of " + names);
    }
  }
  for (const auto& spec : inputs) {
    auto it = feeds.find(spec.name);
    if (it == feeds.end() || it->second == nullptr) {
      if (spec.optional) continue;
      throw InputError("input '" + spec.name + "': required (" + describe(spec) + "), got nothing");
    }
    const TensorView& t = *it->second;
    const std::string who = "input '" + spec.name + "': ";
    if (t.shape.size() != spec.dims.size())
      throw InputError(who + "expected rank " + std::to_string(spec.dims.size()) + " " + describe(spec) + ", got rank " +
                       std::to_string(t.shape.size()) + " with shape " + shape_repr(t.shape));
    if (t.dtype != spec.dtype)
      throw InputError(who + "expected dtype " + dtype_name(spec.dtype) + ", got " + dtype_name(t.dtype));
    for (std::size_t i = 0; i < spec.dims.size(); ++i) {
      const std::string& d = spec.dims[i];
      const int64_t n = t.shape[i];
      if (is_number(d)) {
        if (n != std::stoll(d))
          throw InputError(who + "expected size " + d + " on axis " + std::to_string(i) + " " + describe(spec) +
                           ", got " + std::to_string(n) + " (shape " + shape_repr(t.shape) + ")");
        continue;
      }
      auto terms = terms_of(d);
      if (terms.size() > 1) {
        sums.push_back({spec.name, d, n});
        continue;
      }
      const AxisRange& r = axis_range(*this, terms[0]);
      if (n < r.min || n > r.max)
        throw InputError(who + terms[0] + " (axis " + std::to_string(i) + ") must be in [" + std::to_string(r.min) + ", " +
                         std::to_string(r.max) + "], got " + std::to_string(n) + " (shape " + shape_repr(t.shape) + ")");
      auto found = sizes.find(terms[0]);
      if (found != sizes.end() && found->second.first != n)
        throw InputError(who + terms[0] + " (axis " + std::to_string(i) + ") is " + std::to_string(n) + " but input '" +
                         found->second.second + "' has " + terms[0] + " = " + std::to_string(found->second.first));
      sizes.emplace(terms[0], std::make_pair(n, spec.name));
    }
  }
  for (const auto& s : sums) {
    int64_t expected = 0;
    std::string parts;
    for (const auto& term : terms_of(s.dim)) {
      expected += sizes.at(term).first;
      parts += (parts.empty() ? "" : " + ") + std::to_string(sizes.at(term).first);
    }
    if (s.n != expected)
      throw InputError("input '" + s.input + "': expected " + s.dim + " = " + parts + " = " + std::to_string(expected) +
                       " positions, got " + std::to_string(s.n));
  }
  std::map<std::string, int64_t> out;
  for (const auto& [axis, v] : sizes) out[axis] = v.first;
  return out;
}

std::vector<int64_t> Contract::concrete_shape(const TensorSpec& spec, const std::map<std::string, int64_t>& sizes) const {
  std::vector<int64_t> shape;
  for (const auto& d : spec.dims) {
    if (is_number(d)) {
      shape.push_back(std::stoll(d));
      continue;
    }
    int64_t n = 0;
    for (const auto& term : terms_of(d)) n += sizes.at(term);
    shape.push_back(n);
  }
  return shape;
}

}  // namespace perceiver
