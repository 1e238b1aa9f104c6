// edgetl bundle sample: classify images with the bundle's OpenVINO IR on the CPU.
//
//   edgetl_classify BUNDLE_DIR IMAGE... [--top-k K] [--dump-input FILE]
//
// bundle.json, labels.txt, decoding, preprocessing and printing are shared with the TensorRT sample
// (../common); this file only loads the model and runs it. See README.md for building.
#include <openvino/openvino.hpp>

#include <memory>
#include <string>
#include <vector>

#include "classify_app.hpp"

namespace {

class OpenVinoClassifier : public edgetl::Classifier {
public:
    explicit OpenVinoClassifier(const edgetl::Bundle& bundle) : size_(bundle.preprocessing.input_size) {
        // model.xml next to model.bin, as `edgetl package` writes it
        ov::CompiledModel compiled = core_.compile_model(bundle.model_path, "CPU");
        if (compiled.inputs().size() != 1) throw std::runtime_error("the model must have exactly one input");
        output_ = compiled.output(0);
        if (compiled.outputs().size() > 1 && !bundle.output_name.empty()) {
            output_ = compiled.output(bundle.output_name);  // the output bundle.json names
        }
        request_ = compiled.create_infer_request();
    }

    std::vector<float> infer(const std::vector<float>& input) override {
        // Wrap our buffer (no copy); batch of one, 3 x S x S, float32 NCHW.
        ov::Tensor tensor(ov::element::f32, ov::Shape{1, 3, static_cast<size_t>(size_), static_cast<size_t>(size_)},
                          const_cast<float*>(input.data()));
        request_.set_input_tensor(tensor);
        request_.infer();
        const ov::Tensor out = request_.get_tensor(output_);
        const float* data = out.data<const float>();  // logits or probabilities, [1, classes]
        return std::vector<float>(data, data + out.get_size());
    }

private:
    int size_;
    ov::Core core_;
    ov::Output<const ov::Node> output_;
    ov::InferRequest request_;
};

}  // namespace

int main(int argc, char** argv) {
    return edgetl::classify_main(argc, argv, [](const edgetl::Bundle& bundle) -> std::unique_ptr<edgetl::Classifier> {
        if (!bundle.runtime.empty() && bundle.runtime != "openvino") {
            throw edgetl::BundleError("bundle.json says runtime \"" + bundle.runtime + "\": use the sample in cpp/" + bundle.runtime);
        }
        try {
            return std::make_unique<OpenVinoClassifier>(bundle);
        } catch (const ov::Exception& e) {
            // OpenVINO messages span many lines; keep the first meaningful one
            std::string what = e.what();
            const auto start = what.find_first_not_of("\n ");
            what = what.substr(start == std::string::npos ? 0 : start);
            throw std::runtime_error("OpenVINO cannot load " + bundle.model_path + ": " + what.substr(0, what.find('\n')));
        }
    });
}
