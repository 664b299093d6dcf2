// inferforge_runner: load an `inferforge export` artifact once, run it from N threads, report latency and
// throughput, and write the outputs for a given input.
//
//   inferforge_runner EXPORT_DIR_OR_MODEL_FILE [--input FILE.npy ...] [--threads N] [--intra-op-threads K]
//                     [--iterations M] [--warmup W] [--output-dir DIR]
//
// EXPORT_DIR: a folder written by `inferforge export` (model.ts or model.pt2; its sample/input_<i>.npy are the
// inputs unless --input is given, in spec.json's order). A model file: .ts/.pt (TorchScript, torch::jit::load)
// or .pt2 (AOTInductor package, torch::inductor::AOTIModelPackageLoader).
//
// The threading pattern: ONE loaded model shared by all worker threads, each call under c10::InferenceMode.
// A TorchScript module's forward may be called from several threads at once; an AOTInductor package is
// loaded with one runner per thread inside one container, so its weights exist once. Reloading the model
// per thread, as some examples do, multiplies memory and start-up time by the thread count.
//
// Prints one JSON object on stdout; errors go to stderr with exit status 1 (2 for bad arguments).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include "npy.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  std::string model;
  std::vector<std::string> inputs;
  int threads = 1;
  int intra_op_threads = 0;  // 0: cores / threads
  int iterations = 200;      // timed calls per thread
  int warmup = 10;
  std::string output_dir;
};

[[noreturn]] void usage(const std::string& problem) {
  std::cerr << "error: " << problem << "\n"
            << "usage: inferforge_runner EXPORT_DIR_OR_MODEL_FILE [--input FILE.npy ...] [--threads N]\n"
            << "       [--intra-op-threads K] [--iterations M] [--warmup W] [--output-dir DIR]\n";
  std::exit(2);
}

int positive(const std::string& flag, const std::string& value, int minimum) {
  try {
    size_t used = 0;
    int n = std::stoi(value, &used);
    if (used == value.size() && n >= minimum) return n;
  } catch (const std::exception&) {
  }
  usage(flag + " needs a whole number >= " + std::to_string(minimum) + ", got '" + value + "'");
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--input") o.inputs.push_back(next());
    else if (arg == "--threads") o.threads = positive(arg, next(), 1);
    else if (arg == "--intra-op-threads") o.intra_op_threads = positive(arg, next(), 1);
    else if (arg == "--iterations") o.iterations = positive(arg, next(), 1);
    else if (arg == "--warmup") o.warmup = positive(arg, next(), 0);
    else if (arg == "--output-dir") o.output_dir = next();
    else if (arg == "-h" || arg == "--help") usage("help asked for");
    else if (arg.rfind("--", 0) == 0) usage("unknown option " + arg);
    else if (o.model.empty()) o.model = arg;
    else usage("more than one model given: " + o.model + " and " + arg);
  }
  if (o.model.empty()) usage("no model given");
  return o;
}

// Resolves an export folder into its model file and, unless inputs were given, its sample inputs.
void resolve(Options& o) {
  if (!fs::exists(o.model)) throw std::runtime_error(o.model + " does not exist");
  if (!fs::is_directory(o.model)) return;
  fs::path dir = o.model;
  for (const char* name : {"model.pt2", "model.ts"}) {
    if (fs::exists(dir / name)) o.model = (dir / name).string();
  }
  if (o.model == dir.string()) throw std::runtime_error(dir.string() + " holds neither model.pt2 nor model.ts");
  if (!o.inputs.empty()) return;  // the caller's own inputs
  for (int i = 0;; ++i) {
    fs::path sample = dir / "sample" / ("input_" + std::to_string(i) + ".npy");
    if (!fs::exists(sample)) break;
    o.inputs.push_back(sample.string());
  }
  if (o.inputs.empty()) throw std::runtime_error(dir.string() + "/sample has no input_0.npy: pass --input");
}

class Model {
 public:
  virtual ~Model() = default;
  virtual std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) = 0;
  virtual std::string format() const = 0;
};

class TorchScriptModel : public Model {
 public:
  explicit TorchScriptModel(const std::string& path) : module_(torch::jit::load(path, c10::kCPU)) { module_.eval(); }

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) override {
    std::vector<c10::IValue> args(inputs.begin(), inputs.end());
    c10::IValue result = module_.forward(args);
    std::vector<at::Tensor> outputs;
    if (result.isTensor()) {
      outputs.push_back(result.toTensor());
    } else if (result.isTuple()) {
      for (const auto& v : result.toTupleRef().elements()) outputs.push_back(v.toTensor());
    } else if (result.isTensorList()) {
      outputs = result.toTensorVector();
    } else {
      throw std::runtime_error("the TorchScript module returned neither a tensor nor a tuple of tensors");
    }
    return outputs;
  }
  std::string format() const override { return "torchscript"; }

 private:
  torch::jit::Module module_;
};

class AotiModel : public Model {
 public:
  AotiModel(const std::string& path, int runners)
      : loader_(path, "model", /*run_single_threaded=*/false, static_cast<size_t>(runners)) {}

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) override { return loader_.run(inputs); }
  std::string format() const override { return "aoti"; }

 private:
  torch::inductor::AOTIModelPackageLoader loader_;
};

std::unique_ptr<Model> load_model(const std::string& path, int threads) {
  std::string ext = fs::path(path).extension().string();
  if (ext == ".pt2") return std::make_unique<AotiModel>(path, threads);
  if (ext == ".ts" || ext == ".pt") return std::make_unique<TorchScriptModel>(path);
  throw std::runtime_error(path + ": unknown model file type '" + ext + "' (expected .pt2, .ts or .pt)");
}

double percentile(const std::vector<double>& sorted, double q) {
  size_t rank = static_cast<size_t>(q * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(rank, sorted.size() - 1)];
}

int run(Options o) {
  resolve(o);
  unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  int intra = o.intra_op_threads > 0 ? o.intra_op_threads : std::max(1, static_cast<int>(cores) / o.threads);
  at::set_num_threads(intra);

  std::vector<at::Tensor> inputs;
  for (const auto& file : o.inputs) inputs.push_back(inferforge::read_npy(file));
  if (inputs.empty()) throw std::runtime_error("no inputs: pass --input FILE.npy for each model input");
  const int64_t batch = inputs[0].dim() > 0 ? inputs[0].size(0) : 1;

  auto load_start = Clock::now();
  std::unique_ptr<Model> model = load_model(o.model, o.threads);
  double load_s = std::chrono::duration<double>(Clock::now() - load_start).count();

  std::vector<at::Tensor> outputs;
  {
    c10::InferenceMode guard;
    for (int i = 0; i < std::max(1, o.warmup); ++i) outputs = model->run(inputs);
  }
  if (!o.output_dir.empty()) {
    fs::create_directories(o.output_dir);
    for (size_t i = 0; i < outputs.size(); ++i)
      inferforge::write_npy((fs::path(o.output_dir) / ("output_" + std::to_string(i) + ".npy")).string(), outputs[i]);
  }

  std::vector<std::vector<double>> per_thread(o.threads);
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::string> errors(o.threads);
  std::vector<std::thread> workers;
  for (int t = 0; t < o.threads; ++t) {
    workers.emplace_back([&, t] {
      at::set_num_threads(intra);  // the intra-op setting is per thread for OpenMP
      c10::InferenceMode guard;
      ready.fetch_add(1);
      while (!go.load()) std::this_thread::yield();
      try {
        per_thread[t].reserve(o.iterations);
        for (int i = 0; i < o.iterations; ++i) {
          auto start = Clock::now();
          model->run(inputs);
          per_thread[t].push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
        }
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  }
  while (ready.load() < o.threads) std::this_thread::yield();
  auto start = Clock::now();
  go.store(true);
  for (auto& w : workers) w.join();
  double wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  for (const auto& e : errors) {
    if (!e.empty()) throw std::runtime_error("a worker thread failed: " + e);
  }

  std::vector<double> all;
  for (const auto& v : per_thread) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  double mean = 0;
  for (double v : all) mean += v / static_cast<double>(all.size());
  std::ostringstream json;
  json.precision(6);
  json << "{\"format\": \"" << model->format() << "\", \"model\": \"" << o.model << "\", \"threads\": " << o.threads
       << ", \"intra_op_threads\": " << intra << ", \"batch\": " << batch << ", \"calls\": " << all.size()
       << ", \"load_seconds\": " << load_s << ", \"p50_ms\": " << percentile(all, 0.50)
       << ", \"p90_ms\": " << percentile(all, 0.90) << ", \"p99_ms\": " << percentile(all, 0.99)
       << ", \"mean_ms\": " << mean
       << ", \"throughput_per_s\": " << static_cast<double>(all.size() * batch) / wall_s << ", \"outputs\": [";
  for (size_t i = 0; i < outputs.size(); ++i) {
    json << (i ? ", " : "") << "{\"shape\": [";
    for (int64_t d = 0; d < outputs[i].dim(); ++d) json << (d ? ", " : "") << outputs[i].size(d);
    json << "], \"first\": " << outputs[i].flatten()[0].item<double>() << "}";
  }
  json << "]}";
  std::cout << json.str() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options = parse(argc, argv);
  try {
    return run(options);
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
  }
  return 1;
}
