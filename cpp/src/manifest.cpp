// manifest.json for the C++ runtime: the checks of perceiver_export/artifact/manifest_schema.py for the parts this
// runtime reads (types, lengths, ranges, counts), then Contract::validate(). Nothing here trusts a value's size.
#include "manifest.hpp"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <set>
#include <nlohmann/json.hpp>

#include "printable.hpp"

namespace perceiver {

namespace {

using json = nlohmann::ordered_json;  // keeps the manifest's axis order

constexpr const char* kSchema = "perceiver-export/manifest";
constexpr int kOldestSchemaVersion = 1, kSchemaVersion = 2;  // 2 added default_graph
constexpr const char* kRequiredKeys[] = {"schema", "schema_version", "name", "model", "dtype", "opset", "contract", "onnx", "files"};
constexpr const char* kReadKeys[] = {"schema", "schema_version", "dtype", "contract", "onnx", "files", "graphs", "default_graph"};
constexpr const char* kPlain = "plain";  // model.onnx's name among the graphs
constexpr std::size_t kMaxDepth = 64;        // nlohmann's serializer recurses; a manifest is 5 levels deep
constexpr std::size_t kMaxValues = 1 << 16;  // what the DOM may hold (a manifest has a few hundred values)
constexpr std::size_t kMaxName = 256;

class Checker {
 public:
  explicit Checker(const std::string& where) : where_(where) {}

  [[noreturn]] void fail(const std::string& what) const { throw ArtifactError(where_ + ": " + what); }
  [[noreturn]] void mismatch(const std::string& at, const std::string& what) const {
    fail("does not match the manifest schema at " + at + ": " + what);
  }

  // A value as a message may show it: scalars as JSON (escaped, cut short), containers by their type.
  static std::string shown(const json& v) {
    if (v.is_structured()) return std::string("an ") + v.type_name();
    return printable(v.dump(-1, ' ', false, json::error_handler_t::replace), 60);
  }

  // Bounds what the DOM will hold before nlohmann builds it: depth, and values (about one per comma or bracket).
  void check_depth_and_count(std::string_view text) const {
    std::size_t depth = 0, values = 0;
    bool in_string = false;
    for (std::size_t i = 0; i < text.size(); ++i) {
      const char c = text[i];
      if (in_string) {
        if (c == '\\') ++i;
        else if (c == '"') in_string = false;
        continue;
      }
      if (c == '"') {
        in_string = true;
      } else if (c == ',') {  // each container's first value follows its bracket, the others a comma
        ++values;
      } else if (c == '[' || c == '{') {
        ++values;
        if (++depth > kMaxDepth) fail("JSON nested deeper than " + std::to_string(kMaxDepth) + " levels");
      } else if ((c == ']' || c == '}') && depth > 0) {
        --depth;
      }
      if (values > kMaxValues) fail("more than " + std::to_string(kMaxValues) + " JSON values");
    }
  }

  const json& object(const json& v, const std::string& at, std::size_t max_members) const {
    if (!v.is_object()) mismatch(at, shown(v) + " is not of type 'object'");
    if (v.size() > max_members) mismatch(at, "more than " + std::to_string(max_members) + " properties");
    return v;
  }
  const json& array(const json& v, const std::string& at, std::size_t min_items, std::size_t max_items) const {
    if (!v.is_array()) mismatch(at, shown(v) + " is not of type 'array'");
    if (v.size() < min_items || v.size() > max_items)
      mismatch(at, std::to_string(v.size()) + " items, expected " + std::to_string(min_items) + " to " + std::to_string(max_items));
    return v;
  }
  const json& member(const json& obj, const char* key, const std::string& at) const {
    if (!obj.contains(key)) mismatch(at, std::string("'") + key + "' is a required property");
    return obj.at(key);
  }
  int64_t integer(const json& v, const std::string& at, int64_t lo, int64_t hi) const {
    const bool in_range = v.is_number_unsigned()  ? v.get<uint64_t>() >= uint64_t(lo) && v.get<uint64_t>() <= uint64_t(hi)
                          : v.is_number_integer() ? v.get<int64_t>() >= lo && v.get<int64_t>() <= hi
                                                  : false;
    if (!in_range) mismatch(at, shown(v) + " is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v.get<int64_t>();
  }
  // Names reach file paths and messages: 1 to 256 bytes, no control characters.
  std::string name(const json& v, const std::string& at) const {
    if (!v.is_string()) mismatch(at, shown(v) + " is not of type 'string'");
    const auto& s = v.get_ref<const std::string&>();
    if (s.empty() || s.size() > kMaxName) mismatch(at, "a name is 1 to " + std::to_string(kMaxName) + " bytes, got " + std::to_string(s.size()));
    for (unsigned char c : s)
      if (c < 0x20 || c == 0x7f) mismatch(at, shown(v) + " contains a control character");
    return s;
  }
  DType dtype(const json& v, const std::string& at, bool allow_bool) const {
    for (DType d : {DType::Float32, DType::Float16, DType::BFloat16, DType::Bool})
      if ((allow_bool || d != DType::Bool) && v == dtype_name(d)) return d;
    mismatch(at, shown(v) + " is not one of float32, float16, bfloat16" + (allow_bool ? ", bool" : ""));
  }
  // A file name is a relative path that stays inside the artifact directory.
  void inside_artifact(const std::string& file) const {
    const std::filesystem::path rel(file);
    bool outside = rel.is_absolute();
    for (const auto& part : rel) outside |= part == "..";
    if (outside) fail("file entry '" + printable(file) + "' points outside the artifact");
  }

  TensorSpec tensor(const json& t, const std::string& at) const {
    object(t, at, 64);
    TensorSpec spec;
    spec.name = name(member(t, "name", at), at + "/name");
    spec.dtype = dtype(member(t, "dtype", at), at + "/dtype", true);
    const json& dims = array(member(t, "dims", at), at + "/dims", 0, 8);
    for (std::size_t i = 0; i < dims.size(); ++i) {
      const std::string where = at + "/dims/" + std::to_string(i);
      spec.dims.push_back(dims[i].is_string() ? name(dims[i], where) : std::to_string(integer(dims[i], where, 1, kMaxAxisLength)));
    }
    if (t.contains("optional")) {
      if (!t.at("optional").is_boolean()) mismatch(at + "/optional", shown(t.at("optional")) + " is not of type 'boolean'");
      spec.optional = t.at("optional").get<bool>();
    }
    return spec;
  }

  Contract contract(const json& c, const std::string& at) const {
    object(c, at, 64);
    Contract out;
    for (const auto& item : object(member(c, "axes", at), at + "/axes", 16).items()) {
      const std::string& axis = item.key();
      const json& r = item.value();  // not a structured binding: a lambda captures it below
      const std::string where = at + "/axes/" + printable(axis, 80);
      object(r, where, 64);
      const auto bound = [&](const char* key) { return integer(member(r, key, where), where + "/" + key, 1, kMaxAxisLength); };
      out.axes.push_back({axis, {bound("min"), bound("opt"), bound("max")}});
    }
    const json& inputs = array(member(c, "inputs", at), at + "/inputs", 1, 16);
    for (std::size_t i = 0; i < inputs.size(); ++i) out.inputs.push_back(tensor(inputs[i], at + "/inputs/" + std::to_string(i)));
    const json& outputs = array(member(c, "outputs", at), at + "/outputs", 1, 16);
    for (std::size_t i = 0; i < outputs.size(); ++i) out.outputs.push_back(tensor(outputs[i], at + "/outputs/" + std::to_string(i)));
    try {
      out.validate();
    } catch (const ArtifactError& e) {
      fail(std::string("invalid I/O contract: ") + e.what());
    }
    return out;
  }

  FileRecord file_record(const json& entry, const std::string& at) const {
    object(entry, at, 64);
    const json& sha = member(entry, "sha256", at);
    const bool hex = sha.is_string() && sha.get_ref<const std::string&>().size() == 64 &&
                     sha.get_ref<const std::string&>().find_first_not_of("0123456789abcdef") == std::string::npos;
    if (!hex) mismatch(at + "/sha256", shown(sha) + " is not 64 lowercase hex digits");
    return {sha.get<std::string>(), integer(member(entry, "bytes", at), at + "/bytes", 0, INT64_MAX)};
  }

 private:
  const std::string& where_;
};

}  // namespace

std::string graph_list(const Manifest& manifest) {
  std::string list;
  for (const auto& name : manifest.graph_names) list += (list.empty() ? "" : ", ") + printable(name, 80);
  return list;
}

void check_manifest_size(uint64_t bytes, const std::string& where) {
  if (bytes > kMaxManifestBytes)
    Checker(where).fail(std::to_string(bytes) + " bytes, larger than the " + std::to_string(kMaxManifestBytes) + " allowed");
}

Manifest parse_manifest(std::string_view text, const std::string& where) {
  const Checker check(where);
  check_manifest_size(text.size(), where);
  check.check_depth_and_count(text);
  // Only the top-level members this runtime reads are kept (parity reports, versions, engines are not).
  std::set<std::string> top_level;
  const auto keep = [&top_level](int depth, json::parse_event_t event, json& parsed) {
    if (depth != 1 || event != json::parse_event_t::key) return true;
    const auto& key = *top_level.insert(parsed.get<std::string>()).first;
    return std::find(std::begin(kReadKeys), std::end(kReadKeys), key) != std::end(kReadKeys);
  };
  json m;
  try {
    m = json::parse(text, keep);
  } catch (const json::exception& e) {
    check.fail(std::string("not valid JSON: ") + printable(e.what(), 300));
  }
  if (!m.is_object()) check.fail(std::string("expected a JSON object, got ") + m.type_name());
  std::string missing;
  for (const char* key : kRequiredKeys)
    if (!top_level.count(key)) missing += (missing.empty() ? "'" : ", '") + std::string(key) + "'";
  if (!missing.empty()) check.fail("missing keys [" + missing + "]");
  if (m.at("schema") != kSchema) check.fail("schema " + Checker::shown(m.at("schema")) + " is not '" + kSchema + "'");
  const json& version = m.at("schema_version");
  if (!version.is_number_integer() || version < kOldestSchemaVersion || version > kSchemaVersion)
    check.fail("schema_version " + Checker::shown(version) + " is not supported (this version reads " +
               std::to_string(kOldestSchemaVersion) + " to " + std::to_string(kSchemaVersion) + ")");

  Manifest out;
  out.dtype = dtype_name(check.dtype(m.at("dtype"), "dtype", false));
  out.contract = check.contract(m.at("contract"), "contract");
  const json& onnx = check.object(m.at("onnx"), "onnx", 64);
  out.onnx_file = check.name(check.member(onnx, "file", "onnx"), "onnx/file");
  if (onnx.contains("external_data") && !onnx.at("external_data").is_null())
    out.external_data = check.name(onnx.at("external_data"), "onnx/external_data");
  for (const auto& [name, entry] : check.object(m.at("files"), "files", 64).items())
    out.files.emplace(name, check.file_record(entry, "files/" + printable(name, 80)));
  // As Manifest.check_files in Python, for the files this runtime opens.
  if (!out.files.count(out.onnx_file)) check.fail("'onnx' must name a file listed under 'files'");
  check.inside_artifact(out.onnx_file);
  if (out.external_data) {
    check.inside_artifact(*out.external_data);
    if (!out.files.count(*out.external_data))
      check.fail("'" + printable(*out.external_data) + "' is not listed under 'files'");
  }
  out.graphs[kPlain] = {out.onnx_file, {out.onnx_file}};
  out.graph_names.push_back(kPlain);
  if (out.external_data) out.graphs[kPlain].files.push_back(*out.external_data);
  if (m.contains("graphs")) {
    for (const auto& [name, entry] : check.object(m.at("graphs"), "graphs", 16).items()) {
      const std::string at = "graphs/" + printable(name, 80);
      check.name(json(name), at);
      if (name == kPlain) check.fail("'graphs' may not name a graph 'plain' (that is model.onnx)");
      check.object(entry, at, 64);
      Graph graph{check.name(check.member(entry, "file", at), at + "/file"), {}};
      if (entry.contains("files")) {
        const json& files = check.array(entry.at("files"), at + "/files", 1, 64);
        for (std::size_t i = 0; i < files.size(); ++i) graph.files.push_back(check.name(files[i], at + "/files/" + std::to_string(i)));
      }
      if (std::find(graph.files.begin(), graph.files.end(), graph.file) == graph.files.end()) graph.files.push_back(graph.file);
      for (const auto& file : graph.files) {
        check.inside_artifact(file);
        if (!out.files.count(file)) check.fail("'" + printable(file) + "' of graph '" + printable(name) + "' is not listed under 'files'");
      }
      if (out.graphs.emplace(name, std::move(graph)).second) out.graph_names.push_back(name);
    }
  }
  if (version == 1) {  // schema 1 had no default_graph; its rule, as Python's upgrade step reads it
    out.default_graph = out.graphs.count("optimized") ? "optimized" : kPlain;
  } else {
    if (!top_level.count("default_graph")) check.fail("missing keys ['default_graph']");
    const json& chosen = check.object(m.at("default_graph"), "default_graph", 64);
    out.default_graph = check.name(check.member(chosen, "graph", "default_graph"), "default_graph/graph");
    if (!out.graphs.count(out.default_graph))
      check.fail("default_graph '" + printable(out.default_graph) + "' is not one of its graphs (" + graph_list(out) + ")");
  }
  return out;
}

}  // namespace perceiver
