// Runtime: manifest.json -> Contract, ONNX Runtime session, checked run().
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "perceiver/runtime.hpp"

namespace perceiver {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;  // keeps the manifest's axis order

namespace {

constexpr const char* kSchema = "perceiver-export/manifest";
constexpr int kSchemaVersion = 1;

DType parse_dtype(const std::string& s, const std::string& where) {
  if (s == "float32") return DType::Float32;
  if (s == "float16") return DType::Float16;
  if (s == "bfloat16") return DType::BFloat16;
  if (s == "bool") return DType::Bool;
  throw ArtifactError(where + ": unknown dtype '" + s + "'");
}

ONNXTensorElementDataType onnx_type(DType d) {
  switch (d) {
    case DType::Float32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case DType::Float16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case DType::BFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
    case DType::Bool: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

TensorSpec parse_tensor(const json& t, const std::string& where) {
  TensorSpec spec;
  spec.name = t.at("name").get<std::string>();
  spec.dtype = parse_dtype(t.at("dtype").get<std::string>(), where);
  for (const auto& d : t.at("dims")) spec.dims.push_back(d.is_string() ? d.get<std::string>() : std::to_string(d.get<int64_t>()));
  spec.optional = t.value("optional", false);
  return spec;
}

Ort::Env& shared_env() {
  static Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "perceiver");
  return env;
}

std::size_t numel(const std::vector<int64_t>& shape) {
  std::size_t n = 1;
  for (auto d : shape) n *= static_cast<std::size_t>(d);
  return n;
}

void append_providers(Ort::SessionOptions& so, const std::vector<std::string>& providers) {
  const auto available = Ort::GetAvailableProviders();
  for (const auto& p : providers) {
    if (std::find(available.begin(), available.end(), p) == available.end()) {
      std::string list;
      for (const auto& a : available) list += (list.empty() ? "" : ", ") + a;
      throw BackendUnavailableError("onnxruntime " + Ort::GetVersionString() + " here has no " + p + "; available: " + list +
                                    " (CUDA and TensorRT need the library from onnxruntime-gpu)");
    }
    const OrtApi& api = Ort::GetApi();
    if (p == "CUDAExecutionProvider") {
      OrtCUDAProviderOptionsV2* cuda = nullptr;
      Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
      std::unique_ptr<OrtCUDAProviderOptionsV2, decltype(api.ReleaseCUDAProviderOptions)> guard(cuda, api.ReleaseCUDAProviderOptions);
      so.AppendExecutionProvider_CUDA_V2(*cuda);
    } else if (p == "TensorrtExecutionProvider") {
      OrtTensorRTProviderOptionsV2* trt = nullptr;
      Ort::ThrowOnError(api.CreateTensorRTProviderOptions(&trt));
      std::unique_ptr<OrtTensorRTProviderOptionsV2, decltype(api.ReleaseTensorRTProviderOptions)> guard(trt, api.ReleaseTensorRTProviderOptions);
      so.AppendExecutionProvider_TensorRT_V2(*trt);
    } else if (p != "CPUExecutionProvider") {
      so.AppendExecutionProvider(p.substr(0, p.find("ExecutionProvider")), {});
    }
  }
}

}  // namespace

struct Runtime::Impl {
  Contract contract;
  std::string dtype;
  std::unique_ptr<Ort::Session> session;
};

Runtime::Runtime(const std::string& artifact_dir, const Options& options) : impl_(std::make_unique<Impl>()) {
  const fs::path dir(artifact_dir);
  const fs::path manifest_path = dir / "manifest.json";
  if (!fs::is_directory(dir)) throw ArtifactError(artifact_dir + ": not an artifact directory (it does not exist)");
  if (!fs::is_regular_file(manifest_path))
    throw ArtifactError(manifest_path.string() + ": missing; is " + artifact_dir + " an artifact written by `perceiver_export onnx`?");
  json m;
  try {
    std::ifstream in(manifest_path);
    m = json::parse(in);
  } catch (const json::exception& e) {
    throw ArtifactError(manifest_path.string() + ": not valid JSON: " + e.what());
  }
  const std::string where = manifest_path.string();
  try {
    if (m.at("schema") != kSchema) throw ArtifactError(where + ": schema is not '" + std::string(kSchema) + "'");
    if (m.at("schema_version") != kSchemaVersion)
      throw ArtifactError(where + ": schema_version " + m.at("schema_version").dump() + " is not supported (this version reads " +
                          std::to_string(kSchemaVersion) + ")");
    for (const auto& [axis, r] : m.at("contract").at("axes").items())
      impl_->contract.axes.push_back({axis, {r.at("min").get<int64_t>(), r.at("opt").get<int64_t>(), r.at("max").get<int64_t>()}});
    for (const auto& t : m.at("contract").at("inputs")) impl_->contract.inputs.push_back(parse_tensor(t, where));
    for (const auto& t : m.at("contract").at("outputs")) impl_->contract.outputs.push_back(parse_tensor(t, where));
    impl_->dtype = m.at("dtype").get<std::string>();
  } catch (const json::exception& e) {
    throw ArtifactError(where + ": invalid manifest: " + e.what());
  }
  const fs::path model = dir / m.at("onnx").at("file").get<std::string>();
  if (!fs::is_regular_file(model)) throw ArtifactError(model.string() + ": listed in the manifest but missing");
  Ort::SessionOptions so;
  if (options.intra_op_threads > 0) so.SetIntraOpNumThreads(options.intra_op_threads);
  append_providers(so, options.providers);
  impl_->session = std::make_unique<Ort::Session>(shared_env(), model.c_str(), so);
}

Runtime::~Runtime() = default;

const Contract& Runtime::contract() const { return impl_->contract; }
const std::string& Runtime::dtype() const { return impl_->dtype; }

Tensor Runtime::run(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView* mask) const {
  const Contract& c = impl_->contract;
  std::map<std::string, const TensorView*> feeds{{"q", &q}, {"k", &k}, {"v", &v}};
  if (mask) feeds["mask"] = mask;
  const auto sizes = c.check_inputs(feeds);

  Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<Ort::Value> values;
  std::vector<const char*> names;
  std::unique_ptr<bool[]> all_true;  // what an omitted mask stands for
  for (const auto& spec : c.inputs) {
    auto it = feeds.find(spec.name);
    std::vector<int64_t> shape;
    void* data;
    if (it != feeds.end()) {
      shape = it->second->shape;
      data = const_cast<void*>(it->second->data);  // ONNX Runtime does not write its inputs
    } else {
      shape = c.concrete_shape(spec, sizes);
      all_true.reset(new bool[numel(shape)]);
      std::fill_n(all_true.get(), numel(shape), true);
      data = all_true.get();
    }
    values.push_back(Ort::Value::CreateTensor(cpu, data, numel(shape) * dtype_size(spec.dtype), shape.data(), shape.size(),
                                              onnx_type(spec.dtype)));
    names.push_back(spec.name.c_str());
  }
  const char* out_name = c.outputs.at(0).name.c_str();
  auto outputs = impl_->session->Run(Ort::RunOptions{nullptr}, names.data(), values.data(), values.size(), &out_name, 1);
  auto info = outputs[0].GetTensorTypeAndShapeInfo();
  Tensor out{c.outputs[0].dtype, info.GetShape(), {}};
  const auto* raw = static_cast<const uint8_t*>(outputs[0].GetTensorRawData());
  out.bytes.assign(raw, raw + info.GetElementCount() * dtype_size(out.dtype));
  return out;
}

}  // namespace perceiver
