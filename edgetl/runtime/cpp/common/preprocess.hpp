// edgetl bundle samples: image decoding and preprocessing, shared by the OpenVINO and TensorRT samples.
//
// This reproduces edgetl's Python reference, `edgetl.preprocessing.PreprocessSpec.apply` (Pillow + numpy),
// step by step, so that the C++ sample feeds the network the tensor that `edgetl bench` and
// `edgetl.runtime` feed it:
//
//   1. decode to 8-bit RGB (`to_rgb`): grayscale is replicated to three channels, transparency is
//      composited on white with Pillow's integer alpha_composite arithmetic, 16-bit grayscale is scaled
//      by 1/257 and rounded;
//   2. resize so that the SHORTER side equals resize_size (`resized_size`: the longer side is
//      `int(resize_size * long / short)`), with Pillow's own resampling (`Image.resize`): for bilinear and
//      bicubic a separable convolution whose filter support grows with the downscale factor
//      (antialiased), horizontal pass then vertical pass, 22-bit fixed-point coefficients and 8-bit
//      rounding after each pass (Pillow's libImaging/Resample.c); for nearest Pillow's affine scaling
//      (libImaging/Geometry.c, ImagingScaleAffine);
//   3. center crop input_size x input_size (`center_crop`: zero padding where the image is smaller,
//      offsets `round((side - size) / 2)` with halves rounded to even);
//   4. float32: x / 255, then (x - mean) / std, the same float32 operations in the same order as numpy;
//   5. NCHW, RGB.
//
// Decoded pixels come from stb_image (JPEG, PNG, BMP). PNG and BMP decode losslessly, so the tensor
// equals Python's (bit for bit in practice). JPEG decoders are allowed to differ in their IDCT and
// chroma upsampling: stb_image and the libjpeg-turbo inside Pillow can differ by a level or two on
// some pixels, which is about 0.01-0.04 after normalisation, far below what changes a prediction.
//
// Everything here is header-only; include it from exactly one translation unit (it also carries the
// stb_image implementation, with static linkage).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_FAILURE_USERMSG
#if defined(__GNUC__)  // third-party code: keep its warnings out of the sample's build log
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#endif
#include "third_party/stb_image.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace edgetl {

/// The preprocessing section of bundle.json (the fields the C++ samples need).
struct PreprocessSpec {
    int input_size = 224;
    int resize_size = 256;
    float mean[3] = {0.485f, 0.456f, 0.406f};
    float std[3] = {0.229f, 0.224f, 0.225f};
    std::string interpolation = "bilinear";  // nearest | bilinear | bicubic
};

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (R, G, B).
struct RgbImage {
    int width = 0;
    int height = 0;
    std::vector<uint8_t> pixels;  // width * height * 3

    RgbImage() = default;
    RgbImage(int w, int h) : width(w), height(h), pixels(static_cast<size_t>(w) * h * 3, 0) {}
    uint8_t* row(int y) { return pixels.data() + static_cast<size_t>(y) * width * 3; }
    const uint8_t* row(int y) const { return pixels.data() + static_cast<size_t>(y) * width * 3; }
};

// ------------------------------------------------------------------------------------------------
// Decoding (edgetl.preprocessing.to_rgb)
// ------------------------------------------------------------------------------------------------

/// One channel of Pillow's `Image.alpha_composite(white, rgba)`: integer arithmetic with 7 fractional
/// bits and the shift-based division by 255 (libImaging/AlphaComposite.c), destination opaque white.
inline uint8_t composite_on_white(uint32_t src, uint32_t alpha) {
    if (alpha == 0) return 255;
    const uint32_t precision_bits = 7;
    const uint32_t dst = 255, dst_alpha = 255;
    const uint32_t blend = dst_alpha * (255 - alpha);
    const uint32_t outa255 = alpha * 255 + blend;
    const uint32_t coef1 = alpha * 255 * 255 * (1u << precision_bits) / outa255;
    const uint32_t coef2 = 255 * (1u << precision_bits) - coef1;
    const uint32_t tmp = src * coef1 + dst * coef2 + (0x80u << precision_bits);
    return static_cast<uint8_t>((((tmp >> 8) + tmp) >> 8) >> precision_bits);
}

/// Decodes a JPEG, PNG or BMP file to 8-bit RGB as `to_rgb(Image.open(path))` does.
/// Throws std::runtime_error naming the file when it cannot be read or decoded.
inline RgbImage decode_image(const std::string& path) {
    int width = 0, height = 0, channels = 0;
    if (!stbi_info(path.c_str(), &width, &height, &channels)) {
        throw std::runtime_error("cannot decode image " + path + ": " + stbi_failure_reason());
    }
    RgbImage out(width, height);
    const size_t count = static_cast<size_t>(width) * height;

    if (channels == 1 && stbi_is_16_bit(path.c_str())) {
        // 16-bit grayscale PNG: Pillow opens it as "I;16"; to_rgb scales 65535 -> 255 and rounds.
        int w, h, c;
        stbi_us* data = stbi_load_16(path.c_str(), &w, &h, &c, 1);
        if (!data) throw std::runtime_error("cannot decode image " + path + ": " + stbi_failure_reason());
        for (size_t i = 0; i < count; ++i) {
            const auto v = static_cast<uint8_t>(std::lround(data[i] / 257.0));
            out.pixels[i * 3 + 0] = out.pixels[i * 3 + 1] = out.pixels[i * 3 + 2] = v;
        }
        stbi_image_free(data);
        return out;
    }

    // Ask stb for the file's own channel count: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA (also a palette
    // with transparency, which Pillow composites too).
    int w, h, c;
    stbi_uc* data = stbi_load(path.c_str(), &w, &h, &c, channels);
    if (!data) throw std::runtime_error("cannot decode image " + path + ": " + stbi_failure_reason());
    for (size_t i = 0; i < count; ++i) {
        const stbi_uc* p = data + i * channels;
        uint8_t* q = out.pixels.data() + i * 3;
        switch (channels) {
            case 1: q[0] = q[1] = q[2] = p[0]; break;
            case 2: q[0] = q[1] = q[2] = composite_on_white(p[0], p[1]); break;
            case 3: q[0] = p[0]; q[1] = p[1]; q[2] = p[2]; break;
            default:
                for (int k = 0; k < 3; ++k) q[k] = composite_on_white(p[k], p[3]);
        }
    }
    stbi_image_free(data);
    return out;
}

// ------------------------------------------------------------------------------------------------
// Resizing (Pillow's Image.resize)
// ------------------------------------------------------------------------------------------------

/// (width, height) after resizing the shorter side to `shorter` (edgetl.preprocessing.resized_size:
/// the longer side is `int(shorter * long / short)`, a float64 division truncated).
inline std::pair<int, int> resized_size(int width, int height, int shorter) {
    const bool portrait = width <= height;
    const int short_side = portrait ? width : height;
    const int long_side = portrait ? height : width;
    const int new_long = static_cast<int>(static_cast<double>(static_cast<long long>(shorter) * long_side) / short_side);
    return portrait ? std::make_pair(shorter, new_long) : std::make_pair(new_long, shorter);
}

namespace detail {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's PRECISION_BITS for 8-bit images

inline double bilinear_filter(double x) {
    x = std::fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

inline double bicubic_filter(double x) {  // Keys cubic, a = -0.5 (as Pillow)
    const double a = -0.5;
    x = std::fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/// Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: for every output pixel the first
/// input pixel (bounds[2i]), the number of taps (bounds[2i+1]) and `ksize` fixed-point weights.
struct Coefficients {
    int ksize = 0;
    std::vector<int> bounds;
    std::vector<int32_t> weights;
};

inline Coefficients precompute_coeffs(int in_size, int out_size, double (*filter)(double), double filter_support) {
    const float in0 = 0.0f, in1 = static_cast<float>(in_size);  // Pillow's box, as float
    double scale = static_cast<double>(in1 - in0) / out_size;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = filter_support * filterscale;  // the filter widens when downscaling
    Coefficients c;
    c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.bounds.resize(static_cast<size_t>(out_size) * 2);
    c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);
    std::vector<double> k(c.ksize);
    const double inv_filterscale = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; ++xx) {
        const double center = in0 + (xx + 0.5) * scale;
        int xmin = static_cast<int>(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) {
            const double w = filter((x + xmin - center + 0.5) * inv_filterscale);
            k[x] = w;
            ww += w;
        }
        for (int x = 0; x < xmax; ++x) {
            if (ww != 0.0) k[x] /= ww;
            // to fixed point, rounding half away from zero
            const double v = k[x] * (1 << kPrecisionBits);
            c.weights[static_cast<size_t>(xx) * c.ksize + x] = static_cast<int32_t>(v < 0 ? v - 0.5 : v + 0.5);
        }
        c.bounds[xx * 2 + 0] = xmin;
        c.bounds[xx * 2 + 1] = xmax;
    }
    return c;
}

/// Pillow's clip8: drop the fractional bits and clamp to 0..255.
inline uint8_t clip8(int32_t v) {
    const int32_t s = v >> kPrecisionBits;  // arithmetic shift, as in Pillow
    return static_cast<uint8_t>(s < 0 ? 0 : (s > 255 ? 255 : s));
}

/// Pillow's ImagingResample (8-bit, 3 channels): horizontal pass over the rows the vertical pass will
/// read, then vertical pass; each pass rounds to 8 bits.
inline RgbImage resample(const RgbImage& in, int out_w, int out_h, double (*filter)(double), double support) {
    const bool need_horizontal = out_w != in.width;
    const bool need_vertical = out_h != in.height;
    Coefficients vert = precompute_coeffs(in.height, out_h, filter, support);
    const int ybox_first = vert.bounds[0];
    const int ybox_last = vert.bounds[out_h * 2 - 2] + vert.bounds[out_h * 2 - 1];

    RgbImage temp;
    const RgbImage* src = &in;
    if (need_horizontal) {
        const Coefficients horiz = precompute_coeffs(in.width, out_w, filter, support);
        for (int i = 0; i < out_h; ++i) vert.bounds[i * 2] -= ybox_first;  // rows of the temp image
        temp = RgbImage(out_w, ybox_last - ybox_first);
        for (int yy = 0; yy < temp.height; ++yy) {
            const uint8_t* row = in.row(yy + ybox_first);
            uint8_t* out = temp.row(yy);
            for (int xx = 0; xx < out_w; ++xx) {
                const int xmin = horiz.bounds[xx * 2], xmax = horiz.bounds[xx * 2 + 1];
                const int32_t* k = &horiz.weights[static_cast<size_t>(xx) * horiz.ksize];
                int32_t ss[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1)};
                for (int x = 0; x < xmax; ++x) {
                    const uint8_t* p = row + (x + xmin) * 3;
                    for (int ch = 0; ch < 3; ++ch) ss[ch] += p[ch] * k[x];
                }
                for (int ch = 0; ch < 3; ++ch) out[xx * 3 + ch] = clip8(ss[ch]);
            }
        }
        src = &temp;
    }
    if (!need_vertical) return src == &temp ? temp : in;

    RgbImage out(src->width, out_h);
    for (int yy = 0; yy < out_h; ++yy) {
        const int ymin = vert.bounds[yy * 2], ymax = vert.bounds[yy * 2 + 1];
        const int32_t* k = &vert.weights[static_cast<size_t>(yy) * vert.ksize];
        uint8_t* dst = out.row(yy);
        for (int xx = 0; xx < src->width; ++xx) {
            int32_t ss[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1)};
            for (int y = 0; y < ymax; ++y) {
                const uint8_t* p = src->row(y + ymin) + xx * 3;
                for (int ch = 0; ch < 3; ++ch) ss[ch] += p[ch] * k[y];
            }
            for (int ch = 0; ch < 3; ++ch) dst[xx * 3 + ch] = clip8(ss[ch]);
        }
    }
    return out;
}

/// Pillow's nearest-neighbour resize (ImagingScaleAffine): source coordinate of output pixel x is
/// floor(scale * (x + 0.5)), accumulated in double as Pillow does.
inline RgbImage resize_nearest(const RgbImage& in, int out_w, int out_h) {
    const double ax = static_cast<double>(static_cast<float>(in.width)) / out_w;
    const double ay = static_cast<double>(static_cast<float>(in.height)) / out_h;
    auto coord = [](double v) { return v < 0.0 ? -1 : static_cast<int>(v); };
    std::vector<int> xin(out_w);
    double xo = ax * 0.5;
    for (int x = 0; x < out_w; ++x, xo += ax) xin[x] = std::min(std::max(coord(xo), 0), in.width - 1);
    RgbImage out(out_w, out_h);
    double yo = ay * 0.5;
    for (int y = 0; y < out_h; ++y, yo += ay) {
        const uint8_t* src = in.row(std::min(std::max(coord(yo), 0), in.height - 1));
        uint8_t* dst = out.row(y);
        for (int x = 0; x < out_w; ++x) std::copy_n(src + xin[x] * 3, 3, dst + x * 3);
    }
    return out;
}

}  // namespace detail

/// `image.resize((width, height), filter)` with Pillow's filter named by bundle.json's interpolation.
inline RgbImage resize(const RgbImage& in, int width, int height, const std::string& interpolation) {
    if (width == in.width && height == in.height) return in;  // Python skips the resize too
    if (interpolation == "nearest") return detail::resize_nearest(in, width, height);
    if (interpolation == "bilinear") return detail::resample(in, width, height, detail::bilinear_filter, 1.0);
    if (interpolation == "bicubic") return detail::resample(in, width, height, detail::bicubic_filter, 2.0);
    throw std::runtime_error("unsupported interpolation '" + interpolation + "' (nearest, bilinear, bicubic)");
}

// ------------------------------------------------------------------------------------------------
// Crop and normalisation
// ------------------------------------------------------------------------------------------------

/// edgetl.preprocessing.center_crop: zero padding where the image is smaller than `size`, then the
/// window at offsets round((side - size) / 2), halves to even (Python's round).
inline RgbImage center_crop(const RgbImage& in, int size) {
    int pad_top = 0, pad_left = 0, height = in.height, width = in.width;
    if (size > height || size > width) {
        const int pad_h = std::max(size - height, 0), pad_w = std::max(size - width, 0);
        pad_top = pad_h / 2;
        pad_left = pad_w / 2;
        height += pad_h;
        width += pad_w;
    }
    // std::nearbyint in the default rounding mode rounds halves to even, like Python's round()
    const int top = static_cast<int>(std::nearbyint((height - size) / 2.0));
    const int left = static_cast<int>(std::nearbyint((width - size) / 2.0));
    RgbImage out(size, size);  // zero-filled: the padding
    for (int y = 0; y < size; ++y) {
        const int sy = top + y - pad_top;
        if (sy < 0 || sy >= in.height) continue;
        for (int x = 0; x < size; ++x) {
            const int sx = left + x - pad_left;
            if (sx < 0 || sx >= in.width) continue;
            std::copy_n(in.row(sy) + sx * 3, 3, out.row(y) + x * 3);
        }
    }
    return out;
}

/// uint8 HWC RGB -> float32 CHW: x / 255, then (x - mean) / std, in float32 as numpy does it.
inline std::vector<float> to_normalized_chw(const RgbImage& img, const PreprocessSpec& spec) {
    const size_t plane = static_cast<size_t>(img.width) * img.height;
    std::vector<float> out(plane * 3);
    for (int ch = 0; ch < 3; ++ch) {
        float* dst = out.data() + ch * plane;
        for (size_t i = 0; i < plane; ++i) {
            float v = static_cast<float>(img.pixels[i * 3 + ch]);
            v /= 255.0f;
            v -= spec.mean[ch];
            v /= spec.std[ch];
            dst[i] = v;
        }
    }
    return out;
}

/// The whole pipeline for one file: the float32 CHW tensor (3 x input_size x input_size) the model takes.
inline std::vector<float> preprocess_file(const std::string& path, const PreprocessSpec& spec) {
    const RgbImage rgb = decode_image(path);
    const auto [w, h] = resized_size(rgb.width, rgb.height, spec.resize_size);
    return to_normalized_chw(center_crop(resize(rgb, w, h, spec.interpolation), spec.input_size), spec);
}

}  // namespace edgetl
