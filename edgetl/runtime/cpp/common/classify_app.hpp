// edgetl bundle samples: everything but the inference engine. Reads bundle.json and labels.txt,
// parses the command line, preprocesses every image (preprocess.hpp), asks the engine for the output,
// applies softmax when bundle.json says so and prints the top-k.
//
//   edgetl_classify BUNDLE_DIR IMAGE... [--top-k K] [--dump-input FILE]
//
// Output, one line per image, tab separated: the path, then K (label, score) pairs best first, so the
// first three columns are always `<path>\t<top-1 label>\t<top-1 score>`.
// Errors are one line on stderr. Exit status: 0 all images classified, 1 an image could not be
// decoded (the others are still printed), 2 bad usage or an unusable bundle.
//
// --dump-input FILE writes the preprocessed float32 tensors of the classified images, in order,
// raw little-endian (N x 3 x input_size x input_size) - a debugging aid to compare with Python.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "preprocess.hpp"
#include "third_party/picojson.h"

namespace edgetl {

/// The parts of bundle.json the samples use (schema 1).
struct Bundle {
    std::string dir;
    std::string runtime;           // "openvino" | "tensorrt" | ...
    std::string model_path;        // dir + model.file
    std::string input_name;        // may be empty
    std::vector<int64_t> input_shape;
    std::string output_name;       // may be empty
    std::string scores = "softmax";  // "softmax": the model outputs logits; otherwise used as they are
    std::vector<std::string> labels;
    PreprocessSpec preprocessing;
    picojson::object json;         // the whole document, for engine-specific keys
};

constexpr int kSupportedSchema = 1;

/// A one-line error about the bundle (exit status 2).
struct BundleError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

namespace detail {

inline std::string join_path(const std::string& dir, const std::string& name) {
    if (dir.empty() || dir.back() == '/') return dir + name;
    return dir + "/" + name;
}

inline const picojson::value* member(const picojson::object& obj, const std::string& key) {
    auto it = obj.find(key);
    return it == obj.end() ? nullptr : &it->second;
}

inline std::string string_or(const picojson::object& obj, const std::string& key, const std::string& fallback) {
    const picojson::value* v = member(obj, key);
    return v && v->is<std::string>() ? v->get<std::string>() : fallback;
}

inline const picojson::object& object_at(const picojson::object& obj, const std::string& key) {
    const picojson::value* v = member(obj, key);
    if (!v || !v->is<picojson::object>()) throw BundleError("bundle.json has no \"" + key + "\" object");
    return v->get<picojson::object>();
}

inline double number_at(const picojson::object& obj, const std::string& key, const std::string& where) {
    const picojson::value* v = member(obj, key);
    if (!v || !v->is<double>()) throw BundleError("bundle.json: " + where + "." + key + " must be a number");
    return v->get<double>();
}

inline void three_floats(const picojson::object& obj, const std::string& key, float out[3]) {
    const picojson::value* v = member(obj, key);
    if (!v || !v->is<picojson::array>() || v->get<picojson::array>().size() != 3) {
        throw BundleError("bundle.json: preprocessing." + key + " must be a list of three numbers");
    }
    const auto& arr = v->get<picojson::array>();
    for (int i = 0; i < 3; ++i) {
        if (!arr[i].is<double>()) throw BundleError("bundle.json: preprocessing." + key + " must hold numbers");
        // bundle.json holds float64; numpy normalises with float32 copies of the same numbers
        out[i] = static_cast<float>(arr[i].get<double>());
    }
}

}  // namespace detail

/// Reads BUNDLE_DIR/bundle.json and BUNDLE_DIR/labels.txt; throws BundleError with a one-line message.
inline Bundle load_bundle(const std::string& dir) {
    Bundle b;
    b.dir = dir;
    const std::string json_path = detail::join_path(dir, "bundle.json");
    std::ifstream in(json_path, std::ios::binary);
    if (!in) throw BundleError("no bundle.json in " + dir + " (is it an unpacked edgetl bundle folder?)");
    std::stringstream text;
    text << in.rdbuf();
    picojson::value root;
    const std::string err = picojson::parse(root, text.str());
    if (!err.empty() || !root.is<picojson::object>()) {
        std::string first_line = err.substr(0, err.find('\n'));
        throw BundleError("malformed bundle.json in " + dir + (first_line.empty() ? "" : ": " + first_line));
    }
    b.json = root.get<picojson::object>();
    const auto& doc = b.json;

    const picojson::value* schema = detail::member(doc, "schema");
    if (!schema || !schema->is<double>()) throw BundleError("bundle.json has no schema version");
    if (schema->get<double>() > kSupportedSchema) {
        throw BundleError("bundle.json schema " + schema->to_str() + " is newer than this sample supports (" +
                          std::to_string(kSupportedSchema) + "); use the sample shipped in that bundle");
    }
    const std::string task = detail::string_or(doc, "task", "image-classification");
    if (task != "image-classification") throw BundleError("bundle task '" + task + "' is not image-classification");
    b.runtime = detail::string_or(doc, "runtime", "");

    const auto& model = detail::object_at(doc, "model");
    const std::string model_file = detail::string_or(model, "file", "");
    if (model_file.empty()) throw BundleError("bundle.json: model.file is missing");
    b.model_path = detail::join_path(dir, model_file);

    const auto& input = detail::object_at(doc, "input");
    b.input_name = detail::string_or(input, "name", "");
    if (const picojson::value* shape = detail::member(input, "shape"); shape && shape->is<picojson::array>()) {
        for (const auto& d : shape->get<picojson::array>()) b.input_shape.push_back(d.is<double>() ? static_cast<int64_t>(d.get<double>()) : -1);
    }
    const std::string layout = detail::string_or(input, "layout", "NCHW");
    const std::string dtype = detail::string_or(input, "dtype", "float32");
    if (layout != "NCHW" || dtype != "float32") {
        throw BundleError("this sample feeds float32 NCHW; the bundle's input is " + dtype + " " + layout);
    }

    if (const picojson::value* output = detail::member(doc, "output"); output && output->is<picojson::object>()) {
        b.output_name = detail::string_or(output->get<picojson::object>(), "name", "");
        b.scores = detail::string_or(output->get<picojson::object>(), "scores", "softmax");
    }

    const auto& pre = detail::object_at(doc, "preprocessing");
    PreprocessSpec& spec = b.preprocessing;
    spec.input_size = static_cast<int>(detail::number_at(pre, "input_size", "preprocessing"));
    spec.resize_size = static_cast<int>(detail::number_at(pre, "resize_size", "preprocessing"));
    detail::three_floats(pre, "mean", spec.mean);
    detail::three_floats(pre, "std", spec.std);
    spec.interpolation = detail::string_or(pre, "interpolation", "bilinear");
    if (detail::string_or(pre, "channel_order", "RGB") != "RGB") throw BundleError("only RGB channel order is supported");
    if (spec.input_size < 8 || spec.resize_size < spec.input_size) {
        throw BundleError("bundle.json: need 8 <= preprocessing.input_size <= preprocessing.resize_size");
    }
    if (spec.interpolation != "nearest" && spec.interpolation != "bilinear" && spec.interpolation != "bicubic") {
        throw BundleError("bundle.json: unsupported interpolation '" + spec.interpolation + "'");
    }

    // labels.txt (one per line, index order); bundle.json's "labels" when the file is absent
    std::ifstream labels(detail::join_path(dir, "labels.txt"));
    if (labels) {
        for (std::string line; std::getline(labels, line);) {
            if (!line.empty() && line.back() == '\r') line.pop_back();
            b.labels.push_back(line);
        }
        while (!b.labels.empty() && b.labels.back().empty()) b.labels.pop_back();
    } else if (const picojson::value* arr = detail::member(doc, "labels"); arr && arr->is<picojson::array>()) {
        for (const auto& v : arr->get<picojson::array>()) b.labels.push_back(v.to_str());
    }
    if (b.labels.empty()) throw BundleError("no labels.txt (nor \"labels\" in bundle.json) in " + dir);
    return b;
}

/// The interface each sample implements around its inference engine.
class Classifier {
public:
    virtual ~Classifier() = default;
    /// One image: `input` is float32 CHW (3 x S x S); returns the raw output row (one value per class).
    virtual std::vector<float> infer(const std::vector<float>& input) = 0;
};

/// Numerically stable softmax.
inline std::vector<float> softmax(const std::vector<float>& logits) {
    std::vector<float> out(logits.size());
    if (logits.empty()) return out;
    const float top = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (size_t i = 0; i < logits.size(); ++i) sum += out[i] = std::exp(logits[i] - top);
    for (float& v : out) v = static_cast<float>(v / sum);
    return out;
}

inline void print_usage(const char* program, std::ostream& os) {
    os << "usage: " << program << " BUNDLE_DIR IMAGE... [--top-k K] [--dump-input FILE]\n"
       << "  Classifies JPEG/PNG/BMP images with an unpacked edgetl bundle; prints one line per image:\n"
       << "  PATH<TAB>LABEL<TAB>SCORE, followed by the next K-1 label/score pairs.\n";
}

/// The whole program; `make_classifier` loads the bundle's model into the sample's engine (it may
/// throw BundleError or std::runtime_error with a one-line message).
inline int classify_main(int argc, char** argv,
                         const std::function<std::unique_ptr<Classifier>(const Bundle&)>& make_classifier) {
    const char* program = argc > 0 ? argv[0] : "edgetl_classify";
    std::vector<std::string> positional;
    std::string dump_path;
    int top_k = 5;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            print_usage(program, std::cout);
            return 0;
        } else if (arg == "--top-k" || arg == "--dump-input") {
            if (i + 1 >= argc) {
                std::cerr << program << ": error: " << arg << " needs a value\n";
                return 2;
            }
            const std::string value = argv[++i];
            if (arg == "--dump-input") {
                dump_path = value;
                continue;
            }
            try {
                size_t used = 0;
                top_k = std::stoi(value, &used);
                if (used != value.size() || top_k < 1) throw std::invalid_argument(value);
            } catch (const std::exception&) {
                std::cerr << program << ": error: --top-k needs a positive integer, not '" << value << "'\n";
                return 2;
            }
        } else if (arg.rfind("--", 0) == 0) {
            std::cerr << program << ": error: unknown option " << arg << "\n";
            return 2;
        } else {
            positional.push_back(arg);
        }
    }
    if (positional.size() < 2) {
        print_usage(program, std::cerr);
        return 2;
    }

    Bundle bundle;
    std::unique_ptr<Classifier> classifier;
    try {
        bundle = load_bundle(positional[0]);
        classifier = make_classifier(bundle);
    } catch (const std::exception& e) {
        std::cerr << program << ": error: " << e.what() << "\n";
        return 2;
    }

    std::ofstream dump;
    if (!dump_path.empty()) {
        dump.open(dump_path, std::ios::binary);
        if (!dump) {
            std::cerr << program << ": error: cannot write " << dump_path << "\n";
            return 2;
        }
    }

    int status = 0;
    for (size_t n = 1; n < positional.size(); ++n) {
        const std::string& path = positional[n];
        std::vector<float> input;
        try {
            input = preprocess_file(path, bundle.preprocessing);
        } catch (const std::exception& e) {
            std::cerr << program << ": error: " << e.what() << "\n";
            status = 1;
            continue;
        }
        if (dump) dump.write(reinterpret_cast<const char*>(input.data()), static_cast<std::streamsize>(input.size() * sizeof(float)));

        std::vector<float> scores;
        try {
            scores = classifier->infer(input);
        } catch (const std::exception& e) {
            std::cerr << program << ": error: inference failed on " << path << ": " << e.what() << "\n";
            return 2;
        }
        if (scores.size() != bundle.labels.size()) {
            std::cerr << program << ": error: the model gives " << scores.size() << " scores but the bundle has "
                      << bundle.labels.size() << " labels\n";
            return 2;
        }
        if (bundle.scores == "softmax") scores = softmax(scores);

        std::vector<size_t> order(scores.size());
        std::iota(order.begin(), order.end(), 0);
        const size_t k = std::min<size_t>(static_cast<size_t>(top_k), order.size());
        std::partial_sort(order.begin(), order.begin() + k, order.end(),
                          [&](size_t a, size_t b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); });
        std::cout << path;
        char buf[32];
        for (size_t r = 0; r < k; ++r) {
            std::snprintf(buf, sizeof buf, "%.6f", scores[order[r]]);
            std::cout << '\t' << bundle.labels[order[r]] << '\t' << buf;
        }
        std::cout << '\n';
    }
    std::cout.flush();
    return status;
}

}  // namespace edgetl
