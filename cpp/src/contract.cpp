// The I/O contract read from manifest.json, and the input check shared with the Python runners
// (perceiver_export/contract.py): same order of checks, same messages.
#include <algorithm>
#include <set>

#include "perceiver/runtime.hpp"
#include "printable.hpp"

namespace perceiver {

namespace {

// Python's [t.strip() for t in dim.split("+")]: "k_len + v_len" -> {"k_len", "v_len"}.
std::vector<std::string> terms_of(const std::string& dim) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    const std::size_t plus = dim.find('+', start);
    const std::string part = dim.substr(start, plus == std::string::npos ? std::string::npos : plus - start);
    const auto b = part.find_first_not_of(" \t\n\r\f\v");
    const auto e = part.find_last_not_of(" \t\n\r\f\v");
    out.push_back(b == std::string::npos ? "" : part.substr(b, e - b + 1));
    if (plus == std::string::npos) return out;
    start = plus + 1;
  }
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
    for (const auto& term : terms_of(d)) {
      auto it = sizes.find(term);
      if (it == sizes.end()) throw ArtifactError(spec.name + ": axis '" + term + "' is not known from the inputs");
      n += it->second;
    }
    shape.push_back(n);
  }
  return shape;
}

void Contract::validate() const {
  const std::string bound = std::to_string(kMaxAxisLength);
  for (const auto& [name, r] : axes)
    if (!(1 <= r.min && r.min <= r.opt && r.opt <= r.max && r.max <= kMaxAxisLength))
      throw ArtifactError("axis '" + printable(name, 80) + "': range must satisfy 1 <= min <= opt <= max <= " + bound + ", got " +
                          std::to_string(r.min) + ":" + std::to_string(r.opt) + ":" + std::to_string(r.max));
  if (inputs.empty() || outputs.empty()) throw ArtifactError("a contract has at least one input and one output");
  std::set<std::string> names, required_axes;  // axes a required input carries as a dim of their own
  for (const auto& spec : inputs) {
    if (!names.insert(spec.name).second) throw ArtifactError("input '" + printable(spec.name, 80) + "' is listed twice");
    if (spec.optional && spec.dtype != DType::Bool)
      throw ArtifactError("input '" + printable(spec.name, 80) + "': only a bool mask may be optional (omitted, it means all True)");
    for (const auto& d : spec.dims)
      if (!spec.optional && !is_number(d) && terms_of(d).size() == 1) required_axes.insert(terms_of(d)[0]);
  }
  for (const auto* list : {&inputs, &outputs})
    for (const auto& spec : *list)
      for (const auto& d : spec.dims) {
        const std::string who = printable(spec.name, 80) + ": dim '" + printable(d, 80) + "' ";
        if (is_number(d)) {
          if (d.size() > 10 || std::stoll(d) < 1 || std::stoll(d) > kMaxAxisLength)
            throw ArtifactError(who + "is not a size in [1, " + bound + "]");
          if (spec.optional) throw ArtifactError(who + "is a fixed size; an optional input's dims are axes (omitted, it is all True over them)");
          continue;
        }
        const auto terms = terms_of(d);
        for (const auto& term : terms) {
          if (std::none_of(axes.begin(), axes.end(), [&](const auto& a) { return a.first == term; }))
            throw ArtifactError(who + "names unknown axis '" + printable(term, 80) + "'");
          if (list == &inputs && terms.size() > 1 && !required_axes.count(term))
            throw ArtifactError(who + "adds up axis '" + printable(term, 80) + "', which no required input has as a dim of its own");
        }
      }
}

}  // namespace perceiver
