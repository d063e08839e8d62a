// libFuzzer target: any bytes as manifest.json give a Manifest or perceiver::ArtifactError. A manifest that parses
// has a contract that accepts inputs with every axis at its opt size and refuses them when one grows past max, with
// InputError, and its default graph is one of its graphs, each of whose files is listed. Anything else (another exception, a crash, a leak, a huge allocation, a sanitizer report) is a finding.
#include <cstdint>
#include <string_view>

#include "../src/manifest.hpp"

namespace {

// Exceptions other than the InputErrors expected here escape to libFuzzer as findings.
void check_contract(const perceiver::Contract& contract) {
  std::map<std::string, int64_t> opt;
  for (const auto& [axis, range] : contract.axes) opt[axis] = range.opt;
  std::vector<perceiver::TensorView> views;
  for (const auto& spec : contract.inputs) views.push_back({spec.dtype, contract.concrete_shape(spec, opt), nullptr});
  std::map<std::string, const perceiver::TensorView*> feeds;
  for (std::size_t i = 0; i < views.size(); ++i) feeds[contract.inputs[i].name] = &views[i];
  for (const auto& [axis, n] : contract.check_inputs(feeds))
    if (opt.at(axis) != n) __builtin_trap();
  for (auto& view : views)
    for (auto& d : view.shape) {
      const int64_t kept = d;
      d = perceiver::kMaxAxisLength + int64_t(1);
      try {
        contract.check_inputs(feeds);
        __builtin_trap();  // a size beyond every range was accepted
      } catch (const perceiver::InputError&) {
      }
      d = kept;
    }
  for (const auto& spec : contract.outputs) {
    try {
      contract.concrete_shape(spec, opt);
    } catch (const perceiver::ArtifactError&) {  // an output axis no input carries: allowed, and said so
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  perceiver::Manifest manifest;
  try {
    manifest = perceiver::parse_manifest({reinterpret_cast<const char*>(data), size}, "manifest.json");
  } catch (const perceiver::ArtifactError&) {
    return 0;
  }
  check_contract(manifest.contract);
  const auto chosen = manifest.graphs.find(manifest.default_graph);
  if (chosen == manifest.graphs.end() || manifest.graph_names.size() != manifest.graphs.size()) __builtin_trap();
  for (const auto& [name, graph] : manifest.graphs)
    for (const auto& file : graph.files)
      if (!manifest.files.count(file)) __builtin_trap();
  return 0;
}
