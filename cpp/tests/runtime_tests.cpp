// C++ runtime tests, driven by fixtures from scripts/make_cpp_fixtures.py:
//   runtime_tests FIXTURES parity [GRAPH]   outputs of GRAPH (default: the manifest's choice) match Python's ONNX
//                                           Runtime runner of the same graph on the parity grid
//   runtime_tests FIXTURES graphs    the default graph is the manifest's, an unknown one is refused with Python's message
//   runtime_tests FIXTURES errors    bad inputs raise InputError with Python's exact message
//   runtime_tests FIXTURES damaged   a damaged model.onnx is refused with Python's exact message, before ONNX Runtime parses it
//   runtime_tests FIXTURES threads   8 threads x 200 run() calls give results identical to serial calls
//   runtime_tests FIXTURES providers an execution provider the library lacks is refused by name
//   runtime_tests FIXTURES compare A.npy B.npy   two .npy files agree (for the command-line tool)
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "../src/npy.hpp"
#include "perceiver/runtime.hpp"

using perceiver::npy::Array;
using json = nlohmann::json;

namespace {

// Same ONNX Runtime library and graph as Python; only how reductions are split over threads may
// differ, so outputs agree to float32 rounding. 1e-5 on outputs of magnitude ~1-5 is ~100 ulps.
constexpr double kAtol = 1e-5;

struct Case {
  std::string name;
  Array q, k, v;
  std::optional<Array> mask;
  std::optional<Array> expected;
  std::string message;
};

// The parity section's expected outputs are per graph ("expected_by_graph"); graph "" reads "expected" (plain's).
std::vector<Case> read_cases(const std::string& dir, const std::string& section, const std::string& graph = "") {
  std::ifstream in(dir + "/cases.json");
  json j = json::parse(in);
  std::vector<Case> cases;
  for (const auto& c : j.at(section)) {
    Case x{c.at("name"), perceiver::npy::load(dir + "/" + c.at("q").get<std::string>()),
           perceiver::npy::load(dir + "/" + c.at("k").get<std::string>()), perceiver::npy::load(dir + "/" + c.at("v").get<std::string>()),
           std::nullopt, std::nullopt, c.value("message", "")};
    if (c.contains("mask")) x.mask = perceiver::npy::load(dir + "/" + c.at("mask").get<std::string>());
    if (!graph.empty()) x.expected = perceiver::npy::load(dir + "/" + c.at("expected_by_graph").at(graph).get<std::string>());
    else if (c.contains("expected")) x.expected = perceiver::npy::load(dir + "/" + c.at("expected").get<std::string>());
    cases.push_back(std::move(x));
  }
  return cases;
}

perceiver::Tensor run(const perceiver::Runtime& rt, const Case& c) {
  std::optional<perceiver::TensorView> m;
  if (c.mask) m = c.mask->view();
  return rt.run(c.q.view(), c.k.view(), c.v.view(), m ? &*m : nullptr);
}

double max_abs_diff(const float* a, const float* b, std::size_t n) {
  double worst = 0;
  for (std::size_t i = 0; i < n; ++i) {
    double d = std::fabs(double(a[i]) - double(b[i]));
    if (!(d <= worst)) worst = d;  // NaN counts as a failure
  }
  return worst;
}

int parity(const std::string& dir, const std::string& graph) {
  perceiver::Options options;
  options.graph = graph;
  perceiver::Runtime rt(dir + "/artifact", options);
  std::cout << "graph " << rt.graph() << "\n";
  int failures = 0;
  for (const auto& c : read_cases(dir, "parity", rt.graph())) {
    auto out = run(rt, c);
    const auto& e = *c.expected;
    if (out.shape != e.shape) {
      std::cout << "FAIL " << c.name << ": shape differs\n";
      ++failures;
      continue;
    }
    double d = max_abs_diff(out.as<float>(), reinterpret_cast<const float*>(e.bytes.data()), out.numel());
    bool ok = d <= kAtol;
    failures += !ok;
    std::printf("%s %-18s max abs diff vs Python %.3g\n", ok ? "ok  " : "FAIL", c.name.c_str(), d);
  }
  return failures;
}

int errors(const std::string& dir) {
  perceiver::Runtime rt(dir + "/artifact");
  int failures = 0;
  for (const auto& c : read_cases(dir, "errors")) {
    try {
      run(rt, c);
      std::cout << "FAIL " << c.name << ": accepted\n";
      ++failures;
    } catch (const perceiver::InputError& e) {
      bool same = c.message == e.what();
      failures += !same;
      std::cout << (same ? "ok   " : "FAIL ") << c.name << ": " << e.what() << "\n";
      if (!same) std::cout << "     Python: " << c.message << "\n";
    }
  }
  return failures;
}

int damaged(const std::string& dir) {
  std::ifstream in(dir + "/cases.json");
  json j = json::parse(in);
  int failures = 0;
  for (const auto& c : j.at("damaged")) {
    try {
      perceiver::Options options;
      options.graph = c.at("graph").get<std::string>();
      perceiver::Runtime rt(dir + "/" + c.at("artifact").get<std::string>(), options);
      std::cout << "FAIL " << c.at("name").get<std::string>() << ": accepted\n";
      ++failures;
    } catch (const perceiver::ArtifactError& e) {
      bool same = c.at("message").get<std::string>() == e.what();
      failures += !same;
      std::cout << (same ? "ok   " : "FAIL ") << e.what() << "\n";
      if (!same) std::cout << "     Python: " << c.at("message").get<std::string>() << "\n";
    }
  }
  return failures;
}

int graphs(const std::string& dir) {
  std::ifstream in(dir + "/cases.json");
  json j = json::parse(in);
  int failures = 0;
  perceiver::Runtime rt(dir + "/artifact");
  const bool same_default = rt.graph() == j.at("default_graph").get<std::string>();
  failures += !same_default;
  std::cout << (same_default ? "ok   " : "FAIL ") << "default graph " << rt.graph() << ", the manifest's "
            << j.at("default_graph").get<std::string>() << "\n";
  const auto& unknown = j.at("unknown_graph");
  try {
    perceiver::Options options;
    options.graph = unknown.at("graph").get<std::string>();
    perceiver::Runtime bad(dir + "/artifact", options);
    std::cout << "FAIL graph '" << options.graph << "' was accepted\n";
    ++failures;
  } catch (const perceiver::BackendUnavailableError& e) {
    const bool same = unknown.at("message").get<std::string>() == e.what();
    failures += !same;
    std::cout << (same ? "ok   " : "FAIL ") << e.what() << "\n";
    if (!same) std::cout << "     Python: " << unknown.at("message").get<std::string>() << "\n";
  }
  return failures;
}

int threads(const std::string& dir) {
  perceiver::Runtime rt(dir + "/artifact");
  const auto cases = read_cases(dir, "parity");
  std::vector<perceiver::Tensor> serial;
  for (const auto& c : cases) serial.push_back(run(rt, c));
  constexpr int kThreads = 8, kCalls = 200;
  std::vector<int> mismatches(kThreads, 0);
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t)
    pool.emplace_back([&, t] {
      for (int i = 0; i < kCalls; ++i) {
        std::size_t idx = (t * 7 + i) % cases.size();
        auto out = run(rt, cases[idx]);
        mismatches[t] += out.shape != serial[idx].shape || out.bytes != serial[idx].bytes;
      }
    });
  for (auto& th : pool) th.join();
  int total = 0;
  for (int m : mismatches) total += m;
  std::printf("%d threads x %d calls over %zu shapes: %d results differ from serial\n", kThreads, kCalls, cases.size(), total);
  return total;
}

int providers(const std::string& dir) {
  // This CI links the CPU-only onnxruntime wheel: asking for CUDA must fail clearly, not fall back silently.
  try {
    perceiver::Runtime rt(dir + "/artifact", {1, {"NoSuchExecutionProvider"}});
  } catch (const perceiver::BackendUnavailableError& e) {
    const std::string msg = e.what();
    const bool ok = msg.find("here has no NoSuchExecutionProvider; available: ") != std::string::npos &&
                    msg.find("CPUExecutionProvider") != std::string::npos;
    std::cout << (ok ? "ok   " : "FAIL ") << msg << "\n";
    perceiver::Runtime cpu(dir + "/artifact", {1, {"CPUExecutionProvider"}});
    return ok ? 0 : 1;
  }
  std::cout << "FAIL an unknown provider was accepted\n";
  return 1;
}

int compare(const std::string& a_path, const std::string& b_path) {
  auto a = perceiver::npy::load(a_path), b = perceiver::npy::load(b_path);
  if (a.shape != b.shape || a.dtype != b.dtype) return 1;
  double d = max_abs_diff(reinterpret_cast<const float*>(a.bytes.data()), reinterpret_cast<const float*>(b.bytes.data()),
                          a.bytes.size() / 4);
  std::printf("max abs diff %.3g\n", d);
  return d <= kAtol ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: runtime_tests FIXTURES parity [GRAPH]|graphs|errors|damaged|threads|providers|compare A B\n";
    return 2;
  }
  const std::string dir = argv[1], what = argv[2];
  int failures = what == "parity"  ? parity(dir, argc > 3 ? argv[3] : "")
                 : what == "graphs" ? graphs(dir)
                 : what == "errors" ? errors(dir)
                 : what == "threads" ? threads(dir)
                 : what == "damaged" ? damaged(dir)
                 : what == "providers" ? providers(dir)
                 : what == "compare" && argc == 5 ? compare(argv[3], argv[4])
                                                  : -1;
  if (failures < 0) {
    std::cerr << "unknown test " << what << "\n";
    return 2;
  }
  return failures == 0 ? 0 : 1;
}
