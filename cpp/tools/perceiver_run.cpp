// perceiver_run DIR --q q.npy --k k.npy --v v.npy [--mask m.npy] --out out.npy [--repeat N] [--threads N] [--graph NAME]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <optional>
#include <set>

#include "../src/npy.hpp"
#include "perceiver/runtime.hpp"

namespace {

// A whole decimal integer in [lo, hi], or nothing (std::stoi accepts "3abc" and throws on "abc").
std::optional<int> count(const std::string& text, int lo, int hi) {
  if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  const int n = std::stoi(text);
  return n >= lo && n <= hi ? std::optional<int>(n) : std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage =
      "usage: perceiver_run DIR --q q.npy --k k.npy --v v.npy [--mask m.npy] --out out.npy [--repeat N] [--threads N]\n"
      "                     [--graph NAME]   plain, optimized, int8 (default: the manifest's default_graph)\n";
  if (argc < 2) {
    std::cerr << usage;
    return 2;
  }
  std::map<std::string, std::string> args;
  for (int i = 2; i < argc; ++i) {
    std::string key = argv[i];
    static const std::set<std::string> known{"--q", "--k", "--v", "--mask", "--out", "--repeat", "--threads", "--graph"};
    if (!known.count(key) || i + 1 >= argc) {
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
  const auto repeat = count(args.count("repeat") ? args["repeat"] : "1", 1, 1000000);
  const auto threads = count(args.count("threads") ? args["threads"] : "0", 0, 1024);
  if (!repeat || !threads) {
    std::cerr << (repeat ? "--threads: expected an integer in [0, 1024]" : "--repeat: expected an integer in [1, 1000000]")
              << "\n" << usage;
    return 2;
  }
  try {
    perceiver::Options options;
    options.intra_op_threads = *threads;
    if (args.count("graph")) options.graph = args["graph"];
    perceiver::Runtime runtime(argv[1], options);
    auto q = perceiver::npy::load(args["q"]), k = perceiver::npy::load(args["k"]), v = perceiver::npy::load(args["v"]);
    std::optional<perceiver::npy::Array> mask;
    if (args.count("mask")) mask = perceiver::npy::load(args["mask"]);
    const auto mask_view = mask ? std::optional<perceiver::TensorView>(mask->view()) : std::nullopt;
    std::vector<double> ms;
    perceiver::Tensor out;
    for (int i = 0; i < *repeat; ++i) {
      auto start = std::chrono::steady_clock::now();
      out = runtime.run(q.view(), k.view(), v.view(), mask_view ? &*mask_view : nullptr);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    perceiver::npy::save(args["out"], out.dtype, out.shape, out.bytes.data(), out.bytes.size());
    std::sort(ms.begin(), ms.end());
    std::printf("graph: %s\n", runtime.graph().c_str());
    std::printf("latency over %d run(s): median %.3f ms, min %.3f ms, max %.3f ms\n", *repeat, ms[ms.size() / 2], ms.front(), ms.back());
    return 0;
  } catch (const perceiver::InputError& e) {  // also a malformed .npy file
    std::cerr << "error (InputError): " << e.what() << "\n";
    return 3;
  } catch (const perceiver::ArtifactError& e) {
    std::cerr << "error (ArtifactError): " << e.what() << "\n";
    return 3;
  } catch (const perceiver::BackendUnavailableError& e) {
    std::cerr << "error (BackendUnavailableError): " << e.what() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 3;
  }
}
