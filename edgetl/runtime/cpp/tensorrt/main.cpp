// edgetl bundle sample: classify images with the bundle's TensorRT engine (TensorRT 10 / 11 API).
//
//   edgetl_classify BUNDLE_DIR IMAGE... [--top-k K] [--dump-input FILE]
//
// bundle.json, labels.txt, decoding, preprocessing and printing are shared with the OpenVINO sample
// (../common); this file deserializes model/model.engine and runs it with enqueueV3. An engine only
// runs on the GPU model and TensorRT version that built it (see model.engine.json); build it on the
// device with `edgetl compile` or trtexec when the bundle carries only the ONNX file. See README.md.
#include <NvInferRuntime.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "classify_app.hpp"

namespace {

/// Throws with the CUDA error string when a CUDA runtime call fails.
void check_cuda(cudaError_t status, const char* what) {
    if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

/// TensorRT's log: warnings and errors to stderr, one line each.
class Logger : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << msg << "\n";
    }
};

size_t volume(const nvinfer1::Dims& dims) {
    size_t n = 1;
    for (int i = 0; i < dims.nbDims; ++i) n *= static_cast<size_t>(dims.d[i] < 0 ? 0 : dims.d[i]);
    return n;
}

size_t element_size(nvinfer1::DataType type) {
    switch (type) {
        case nvinfer1::DataType::kFLOAT: return 4;
        case nvinfer1::DataType::kHALF: return 2;
        default: throw std::runtime_error("this sample handles float32 and float16 input/output tensors only");
    }
}

/// The engine file: model.file when it is an engine, else model/model.engine beside it.
std::string engine_path(const edgetl::Bundle& bundle) {
    const std::string& file = bundle.model_path;
    auto ends_with = [&](const std::string& suffix) {
        return file.size() >= suffix.size() && file.compare(file.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with(".engine") || ends_with(".plan")) return file;
    return edgetl::detail::join_path(bundle.dir, "model/model.engine");
}

/// The DLA core the engine was built for, from its fingerprint model.engine.json ("device": "DLA:N"); -1 for GPU.
int dla_core(const std::string& engine_file) {
    std::ifstream in(engine_file + ".json");
    if (!in) return -1;
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    picojson::value root;
    if (!picojson::parse(root, text).empty() || !root.is<picojson::object>()) return -1;
    const std::string device = edgetl::detail::string_or(root.get<picojson::object>(), "device", "GPU");
    return device.rfind("DLA:", 0) == 0 ? std::stoi(device.substr(4)) : -1;
}

class TensorRtClassifier : public edgetl::Classifier {
public:
    explicit TensorRtClassifier(const edgetl::Bundle& bundle) {
        const std::string path = engine_path(bundle);
        std::ifstream file(path, std::ios::binary);
        if (!file) {
            throw edgetl::BundleError("no TensorRT engine at " + path + "; build one on this device (edgetl compile, or trtexec --onnx=" +
                                      bundle.model_path + " --saveEngine=" + path + " plus --fp16/--int8 for the bundle's precision)");
        }
        const std::vector<char> blob((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());

        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) throw std::runtime_error("cannot create the TensorRT runtime");
        if (const int core = dla_core(path); core >= 0) runtime_->setDLACore(core);
        engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
        if (!engine_) {
            throw std::runtime_error("TensorRT cannot deserialize " + path +
                                     " (built for another GPU or TensorRT version? see model.engine.json)");
        }
        context_.reset(engine_->createExecutionContext());
        if (!context_) throw std::runtime_error("cannot create a TensorRT execution context");

        // Find the input and output tensors (one each; bundle.json names them when there are more).
        for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
            const char* name = engine_->getIOTensorName(i);
            if (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT) {
                if (input_name_.empty() || bundle.input_name == name) input_name_ = name;
            } else if (output_name_.empty() || bundle.output_name == name) {
                output_name_ = name;
            }
        }
        if (input_name_.empty() || output_name_.empty()) throw std::runtime_error("the engine needs an input and an output");

        // A dynamic batch (-1): run the smallest batch the optimization profile allows; the image goes in slot 0.
        nvinfer1::Dims shape = engine_->getTensorShape(input_name_.c_str());
        const int size = bundle.preprocessing.input_size;
        if (shape.nbDims != 4 || (shape.d[1] != 3 && shape.d[1] != -1)) throw std::runtime_error("the engine input is not N x 3 x H x W");
        if (shape.d[0] < 0 || shape.d[2] < 0 || shape.d[3] < 0) {
            const nvinfer1::Dims min = engine_->getProfileShape(input_name_.c_str(), 0, nvinfer1::OptProfileSelector::kMIN);
            shape.d[0] = shape.d[0] < 0 ? std::max<int64_t>(1, min.d[0]) : shape.d[0];
            shape.d[1] = 3;
            shape.d[2] = size;
            shape.d[3] = size;
            if (!context_->setInputShape(input_name_.c_str(), shape)) throw std::runtime_error("the engine rejects input shape 1x3xSxS");
        }
        if (shape.d[2] != size || shape.d[3] != size) throw std::runtime_error("the engine input size differs from bundle.json's");
        batch_ = static_cast<size_t>(shape.d[0]);
        input_type_ = engine_->getTensorDataType(input_name_.c_str());
        output_type_ = engine_->getTensorDataType(output_name_.c_str());
        input_count_ = volume(shape);
        output_count_ = volume(context_->getTensorShape(output_name_.c_str()));  // resolved after setInputShape

        host_input_.resize(input_count_ * element_size(input_type_));
        host_output_.resize(output_count_ * element_size(output_type_));
        check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
        check_cuda(cudaMalloc(&input_device_, host_input_.size()), "cudaMalloc");
        check_cuda(cudaMalloc(&output_device_, host_output_.size()), "cudaMalloc");
        context_->setTensorAddress(input_name_.c_str(), input_device_);
        context_->setTensorAddress(output_name_.c_str(), output_device_);
    }

    ~TensorRtClassifier() override {
        if (input_device_) cudaFree(input_device_);
        if (output_device_) cudaFree(output_device_);
        if (stream_) cudaStreamDestroy(stream_);
    }

    std::vector<float> infer(const std::vector<float>& input) override {
        // Host -> device (the image in slot 0; zeros fill a larger minimum batch), run, device -> host,
        // all on one stream, then wait once.
        std::fill(host_input_.begin(), host_input_.end(), 0);
        if (input_type_ == nvinfer1::DataType::kHALF) {
            auto* dst = reinterpret_cast<__half*>(host_input_.data());
            for (size_t i = 0; i < input.size(); ++i) dst[i] = __float2half(input[i]);
        } else {
            std::memcpy(host_input_.data(), input.data(), input.size() * sizeof(float));
        }
        check_cuda(cudaMemcpyAsync(input_device_, host_input_.data(), host_input_.size(), cudaMemcpyHostToDevice, stream_),
                   "cudaMemcpyAsync");
        if (!context_->enqueueV3(stream_)) throw std::runtime_error("enqueueV3 failed");
        check_cuda(cudaMemcpyAsync(host_output_.data(), output_device_, host_output_.size(), cudaMemcpyDeviceToHost, stream_),
                   "cudaMemcpyAsync");
        check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");

        std::vector<float> row(output_count_ / batch_);  // the first image's scores
        for (size_t i = 0; i < row.size(); ++i) {
            if (output_type_ == nvinfer1::DataType::kHALF) {
                row[i] = __half2float(reinterpret_cast<const __half*>(host_output_.data())[i]);
            } else {
                std::memcpy(&row[i], host_output_.data() + i * sizeof(float), sizeof(float));
            }
        }
        return row;
    }

private:
    Logger logger_;  // declared first: outlives the runtime, engine and context
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;  // destroyed before the engine (reverse order)
    std::string input_name_, output_name_;
    nvinfer1::DataType input_type_ = nvinfer1::DataType::kFLOAT, output_type_ = nvinfer1::DataType::kFLOAT;
    size_t batch_ = 1, input_count_ = 0, output_count_ = 0;
    std::vector<unsigned char> host_input_, host_output_;  // staging buffers in the tensors' own types
    void* input_device_ = nullptr;
    void* output_device_ = nullptr;
    cudaStream_t stream_ = nullptr;
};

}  // namespace

int main(int argc, char** argv) {
    return edgetl::classify_main(argc, argv, [](const edgetl::Bundle& bundle) -> std::unique_ptr<edgetl::Classifier> {
        if (!bundle.runtime.empty() && bundle.runtime != "tensorrt") {
            throw edgetl::BundleError("bundle.json says runtime \"" + bundle.runtime + "\": use the sample in cpp/" + bundle.runtime);
        }
        return std::make_unique<TensorRtClassifier>(bundle);
    });
}
