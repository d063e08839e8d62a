// Runtime: manifest.json -> Contract, ONNX Runtime session, checked run().
#include <onnxruntime_cxx_api.h>
#include <openssl/evp.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "manifest.hpp"
#include "perceiver/runtime.hpp"
#include "printable.hpp"

namespace perceiver {

namespace fs = std::filesystem;

namespace {

ONNXTensorElementDataType onnx_type(DType d) {
  switch (d) {
    case DType::Float32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case DType::Float16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case DType::BFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
    case DType::Bool: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
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

std::string sha256_hex(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<std::size_t>(in.gcount()));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) out += {hex[digest[i] >> 4], hex[digest[i] & 15]};
  return out;
}

// Same checks and messages as Manifest.check_files in Python, for a file this runtime reads; parse_manifest
// has checked that the name is listed and stays inside the artifact.
void check_file(const fs::path& dir, const Manifest& manifest, const std::string& name) {
  const fs::path path = dir / name;
  const std::string shown = printable(path.string());
  if (!fs::is_regular_file(path)) throw ArtifactError(shown + ": listed in the manifest but missing");
  const auto size = static_cast<int64_t>(fs::file_size(path));
  const FileRecord& recorded = manifest.files.at(name);
  if (size != recorded.bytes)
    throw ArtifactError(shown + ": damaged: " + std::to_string(size) + " bytes, the manifest records " + std::to_string(recorded.bytes));
  const std::string digest = sha256_hex(path);
  if (digest != recorded.sha256)
    throw ArtifactError(shown + ": damaged: sha256 " + digest.substr(0, 16) + "\u2026 does not match the manifest's " +
                        recorded.sha256.substr(0, 16) + "\u2026");
}

Manifest read_manifest(const fs::path& dir, const std::string& artifact_dir) {
  const fs::path manifest_path = dir / "manifest.json";
  const std::string where = printable(manifest_path.string());
  if (!fs::is_directory(dir)) throw ArtifactError(printable(artifact_dir) + ": not an artifact directory (it does not exist)");
  if (!fs::is_regular_file(manifest_path))
    throw ArtifactError(where + ": missing; is " + printable(artifact_dir) + " an artifact written by `perceiver_export onnx`?");
  const auto manifest_bytes = fs::file_size(manifest_path);
  check_manifest_size(manifest_bytes, where);  // before reading it
  std::string text(manifest_bytes, '\0');
  std::ifstream in(manifest_path, std::ios::binary);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (!in) throw ArtifactError(where + ": cannot read it");
  return parse_manifest(text, where);
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
  std::string graph;
  std::unique_ptr<Ort::Session> session;
};

Runtime::Runtime(const std::string& artifact_dir, const Options& options) : impl_(std::make_unique<Impl>()) {
  const fs::path dir(artifact_dir);
  const Manifest manifest = read_manifest(dir, artifact_dir);
  impl_->contract = manifest.contract;
  impl_->dtype = manifest.dtype;
  impl_->graph = options.graph.empty() ? manifest.default_graph : options.graph;
  const auto graph = manifest.graphs.find(impl_->graph);
  if (graph == manifest.graphs.end())  // Python's message (runtime/onnxrt/runner.py)
    throw BackendUnavailableError(printable(artifact_dir) + " has no '" + printable(impl_->graph, 80) + "' graph; it has: " +
                                  graph_list(manifest));
  // The graph (and its external data) must be the bytes that were exported and verified.
  for (const auto& file : graph->second.files) check_file(dir, manifest, file);
  const fs::path model = dir / graph->second.file;
  Ort::SessionOptions so;
  if (options.intra_op_threads > 0) so.SetIntraOpNumThreads(options.intra_op_threads);
  append_providers(so, options.providers);
  impl_->session = std::make_unique<Ort::Session>(shared_env(), model.c_str(), so);
}

Runtime::~Runtime() = default;

const Contract& Runtime::contract() const { return impl_->contract; }
const std::string& Runtime::dtype() const { return impl_->dtype; }
const std::string& Runtime::graph() const { return impl_->graph; }

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
