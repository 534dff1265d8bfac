//! SwAV's augmentations with the exact semantics of facebookresearch/swav
//! `src/multicropdataset.py` (torchvision transforms over Pillow images):
//!
//! `RandomResizedCrop(size, scale=(min, max))` → `RandomHorizontalFlip()` →
//! `RandomApply([ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8)` → `RandomGrayscale(p=0.2)` →
//! `PILRandomGaussianBlur(p=0.5, radius U(0.1, 2.0))` → `ToTensor()` → `Normalize(mean, std)`.
//!
//! Each pixel operation reproduces Pillow's integer arithmetic (`ImageEnhance` blends,
//! `convert("L")`, `convert("HSV")`, `GaussianBlur`'s three extended box passes), checked
//! against Pillow's output in `tests/it/transforms.rs`. Resizing uses `fast_image_resize`'s
//! convolution with Pillow's bilinear filter (antialiased when shrinking, like Pillow).

use super::image::{luma, RgbImage};
use super::rng::Rng;
use super::simd::fast;
use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

/// A crop box in full-image pixel coordinates: top row, left column, height, width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// torchvision `RandomResizedCrop.get_params`: ten tries at an area fraction in `scale` and
/// an aspect ratio log-uniform in `ratio`, then the central fallback. Rounding is Python's
/// (half to even).
pub fn random_resized_crop_box(
    width: usize,
    height: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> CropBox {
    let area = (width * height) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.uniform(scale.0, scale.1);
        let aspect = rng.uniform(lr0, lr1).exp();
        let w = (target * aspect).sqrt().round_ties_even() as usize;
        let h = (target / aspect).sqrt().round_ties_even() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.below(height - h + 1);
            let left = rng.below(width - w + 1);
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0.min(ratio.1) {
        (
            width,
            (width as f64 / ratio.0.min(ratio.1)).round_ties_even() as usize,
        )
    } else if in_ratio > ratio.0.max(ratio.1) {
        (
            (height as f64 * ratio.0.max(ratio.1)).round_ties_even() as usize,
            height,
        )
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// Resize the region `crop` (in coordinates of an image `scale` times larger than `img`,
/// e.g. before a DCT-scaled decode) to `out_w`×`out_h` with Pillow's bilinear filter.
///
/// At scale 1 the region is cut out first, as torchvision's `resized_crop` does, so the
/// filter's border pixels repeat the crop's edge rather than reading beyond it. A scaled
/// image cannot hold the region exactly, so the filter reads a fractional box instead.
pub fn resized_crop(
    img: &RgbImage,
    crop: CropBox,
    scale: f64,
    out_w: usize,
    out_h: usize,
    resizer: &mut Resizer,
) -> RgbImage {
    let cut;
    let (src_img, opts) = if scale == 1.0 {
        cut = img.crop(crop.left, crop.top, crop.width, crop.height);
        (
            &cut,
            ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
        )
    } else {
        let opts = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
            .crop(
                crop.left as f64 / scale,
                crop.top as f64 / scale,
                (crop.width as f64 / scale).min(img.width as f64),
                (crop.height as f64 / scale).min(img.height as f64),
            );
        (img, opts)
    };
    let src = fast_image_resize::images::ImageRef::new(
        src_img.width as u32,
        src_img.height as u32,
        &src_img.data,
        PixelType::U8x3,
    )
    .expect("buffer matches its size");
    let mut dst = Image::new(out_w as u32, out_h as u32, PixelType::U8x3);
    resizer
        .resize(&src, &mut dst, &opts)
        .expect("same pixel types");
    RgbImage::new(out_w, out_h, dst.into_vec())
}

/// torchvision `Resize(size)` with an int: the shorter side becomes `size`, the longer
/// `int(size * long / short)`.
pub fn resize_shorter(img: &RgbImage, size: usize, resizer: &mut Resizer) -> RgbImage {
    let (w, h) = (img.width, img.height);
    let (nw, nh) = if w <= h {
        (size, size * h / w)
    } else {
        (size * w / h, size)
    };
    let full = CropBox {
        top: 0,
        left: 0,
        height: h,
        width: w,
    };
    resized_crop(img, full, 1.0, nw, nh, resizer)
}

/// torchvision `CenterCrop(size)`: offsets `int(round((side - size) / 2))`.
pub fn center_crop(img: &RgbImage, size: usize) -> RgbImage {
    let top = ((img.height.saturating_sub(size)) as f64 / 2.0).round_ties_even() as usize;
    let left = ((img.width.saturating_sub(size)) as f64 / 2.0).round_ties_even() as usize;
    img.crop(left, top, size, size)
}

/// Pillow's `Image.blend(a, b, alpha)` per byte: `a + alpha * (b - a)` in single precision,
/// truncated and clipped (`libImaging/Blend.c` semantics).
#[inline(always)]
fn blend(a: u8, b: u8, alpha: f32) -> u8 {
    // Pillow clips to [0, 255] and truncates: exactly Rust's saturating float-to-int cast.
    (a as f32 + alpha * (b as f32 - a as f32)) as u8
}

/// `ImageEnhance.Brightness(img).enhance(f)`: blend with black.
pub fn adjust_brightness(img: &mut RgbImage, f: f32) {
    let lut: [u8; 256] = std::array::from_fn(|v| blend(0, v as u8, f));
    apply_lut(&mut img.data, &lut);
}

/// Replace every byte by its entry in `lut`.
fn apply_lut(data: &mut [u8], lut: &[u8; 256]) {
    fast(
        #[inline(always)]
        || data.iter_mut().for_each(|v| *v = lut[*v as usize]),
    );
}

/// `ImageEnhance.Contrast(img).enhance(f)`: blend with the mean grey level (rounded).
pub fn adjust_contrast(img: &mut RgbImage, f: f32) {
    let n = (img.width * img.height).max(1) as f64;
    let sum: u64 = fast(
        #[inline(always)]
        || {
            img.data
                .chunks_exact(3)
                .map(|p| luma(p[0], p[1], p[2]) as u64)
                .sum()
        },
    );
    let mean = (sum as f64 / n + 0.5) as u8;
    let lut: [u8; 256] = std::array::from_fn(|v| blend(mean, v as u8, f));
    apply_lut(&mut img.data, &lut);
}

/// `ImageEnhance.Color(img).enhance(f)`: blend with the image's own grey version.
pub fn adjust_saturation(img: &mut RgbImage, f: f32) {
    fast(
        #[inline(always)]
        || {
            for p in img.data.chunks_exact_mut(3) {
                let l = luma(p[0], p[1], p[2]);
                for v in p.iter_mut() {
                    *v = blend(l, *v, f);
                }
            }
        },
    );
}

/// torchvision `adjust_hue` on a Pillow image: to HSV, add `uint8(f * 255)` to H with
/// wrap-around, back to RGB (Pillow's `rgb2hsv` / `hsv2rgb`).
pub fn adjust_hue(img: &mut RgbImage, f: f32) {
    // np.uint8(hue_factor * 255): the float truncated toward zero, then wrapped to a byte.
    let shift = ((f * 255.0) as i32).rem_euclid(256) as u8;
    let t = hue_tables();
    fast(
        #[inline(always)]
        || {
            for p in img.data.chunks_exact_mut(3) {
                let [h, s, v] = t.rgb_to_hsv(p[0], p[1], p[2]);
                let rgb = t.hsv_to_rgb(h.wrapping_add(shift), s, v);
                p.copy_from_slice(&rgb);
            }
        },
    );
}

/// Where the hue byte of (`case`, `cr`, `plus`, `minus`) is kept in [`HueTables::hue`].
#[inline(always)]
fn hue_index(case: usize, cr: usize, plus: usize, minus: usize) -> usize {
    (case * 256 + cr) * 511 + plus + 255 - minus
}

/// Tables holding every intermediate of Pillow's HSV conversions that depends on at most two
/// bytes, computed once with Pillow's own float/double mix so results stay bit-identical.
struct HueTables {
    /// The hue byte, indexed by [`hue_index`]: the whole single-precision chain of `rgb2hsv`
    /// for one pixel is a function of which channel is the maximum, `maxc − minc` and one
    /// difference of channels.
    hue: Vec<u8>,
    /// Saturation byte of `cr / maxc`, indexed `maxc * 256 + cr`.
    sat: Vec<u8>,
    /// The fraction `f` of the hue sector, per hue byte (single precision, as Pillow keeps it).
    frac: [f32; 256],
    /// `fs = s / 255` per saturation byte (single precision).
    fs: [f32; 256],
    /// Sector `i mod 6` per hue byte.
    sector: [u8; 256],
}

fn hue_tables() -> &'static HueTables {
    static T: std::sync::OnceLock<HueTables> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let ratio = |k: usize, cr: usize| if cr == 0 { 0.0 } else { k as f32 / cr as f32 };
        let mut sat = vec![0u8; 256 * 256];
        for a in 1..256usize {
            for k in 0..=a {
                // maxc = a, cr = k (cr <= maxc)
                sat[a * 256 + k] = (((ratio(k, a) as f64) * 255.0) as i32).clamp(0, 255) as u8;
            }
        }
        let mut hue = vec![0u8; 3 * 256 * 511];
        for case in 0..3 {
            for cr in 0..256usize {
                // One of `plus` and `minus` is `cr` (it is the minimum channel's difference).
                for other in 0..=cr {
                    for (plus, minus) in [(cr, other), (other, cr)] {
                        let h = [0.0f32, 2.0, 4.0][case] + ratio(plus, cr) - ratio(minus, cr);
                        // Pillow mixes float variables with double literals: mirror where each
                        // rounding happens. fmod(x, 1) for x in [5/6, 11/6]: subtracting 1 is
                        // exact there.
                        let x = h as f64 / 6.0 + 1.0;
                        let h = (if x >= 1.0 { x - 1.0 } else { x }) as f32;
                        hue[hue_index(case, cr, plus, minus)] =
                            ((h as f64 * 255.0) as i32).clamp(0, 255) as u8;
                    }
                }
            }
        }
        let mut sector = [0u8; 256];
        let mut frac = [0f32; 256];
        for (h, (sec, fr)) in sector.iter_mut().zip(frac.iter_mut()).enumerate() {
            let hf = h as f64 * 6.0 / 255.0;
            *sec = (hf.floor() as i32).rem_euclid(6) as u8;
            *fr = (hf - hf.floor()) as f32;
        }
        let fs: [f32; 256] = std::array::from_fn(|s| (s as f64 / 255.0) as f32);
        HueTables {
            hue,
            sat,
            frac,
            fs,
            sector,
        }
    })
}

impl HueTables {
    /// Pillow's `rgb2hsv` (colorsys arithmetic in single precision, bytes truncated).
    ///
    /// Two table lookups and no branch (which channel is the maximum is unpredictable on
    /// photos). A grey pixel (`maxc == minc`) needs no case of its own: it is the red case with
    /// `cr = 0`, tabulated as hue 0, and row 0 of `sat` is zeros.
    #[inline(always)]
    fn rgb_to_hsv(&self, r: u8, g: u8, b: u8) -> [u8; 3] {
        let maxc = r.max(g).max(b);
        let minc = r.min(g).min(b);
        let cr = (maxc - minc) as usize;
        // Pillow: r max → bc − gc; g max → 2 + rc − bc; else 4 + gc − rc (xc = (maxc − x) / cr).
        // The case: 0 where red is the maximum, else 1 where green is, else 2.
        let case = usize::from(r != maxc) * (1 + usize::from(g != maxc));
        let diff = [maxc - b, maxc - r, maxc - g];
        let (plus, minus) = (diff[case] as usize, diff[[2, 0, 1][case]] as usize);
        let hb = self.hue[hue_index(case, cr, plus, minus)];
        [hb, self.sat[maxc as usize * 256 + cr], maxc]
    }

    /// Pillow's `hsv2rgb`.
    ///
    /// `s == 0` (grey) needs no branch: with `fs = 0`, `p`, `q` and `t` all equal `v`.
    #[inline(always)]
    fn hsv_to_rgb(&self, h: u8, s: u8, v: u8) -> [u8; 3] {
        let vf = v as f64;
        // C's round() (half away from zero) for 0 <= x < 256, without a libm call.
        let byte = |x: f64| {
            let i = x as i32;
            (i + i32::from(x - i as f64 >= 0.5)).clamp(0, 255) as u8
        };
        let (fs, f) = (self.fs[s as usize], self.frac[h as usize]);
        let p = byte(vf * (1.0 - fs as f64));
        let q = byte(vf * (1.0 - (fs * f) as f64));
        let t = byte(vf * (1.0 - fs as f64 * (1.0 - f as f64)));
        // Which of (v, p, q, t) each channel takes, per sector: a lookup instead of a
        // six-way branch that photos make unpredictable.
        const PICK: [[usize; 3]; 6] = [
            [0, 3, 1],
            [2, 0, 1],
            [1, 0, 3],
            [1, 2, 0],
            [3, 1, 0],
            [0, 1, 2],
        ];
        let vals = [v, p, q, t];
        let pick = PICK[self.sector[h as usize] as usize];
        [vals[pick[0]], vals[pick[1]], vals[pick[2]]]
    }
}

/// `convert("L")` replicated to three channels.
pub fn grayscale(img: &mut RgbImage) {
    fast(
        #[inline(always)]
        || {
            for p in img.data.chunks_exact_mut(3) {
                let l = luma(p[0], p[1], p[2]);
                p.fill(l);
            }
        },
    );
}

/// The box radius of one of `passes` box blurs approximating a Gaussian of `radius`
/// (Gwosdek et al., "Theoretical foundations of Gaussian convolution by extended box
/// filtering", eq. 7, 11, 14), in single precision like Pillow.
fn box_radius(radius: f32, passes: u32) -> f32 {
    let sigma2 = radius * radius / passes as f32;
    let big_l = (12.0 * sigma2 as f64 + 1.0).sqrt() as f32;
    let l = ((big_l as f64 - 1.0) / 2.0).floor() as f32;
    let mut a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    a /= 6.0 * (sigma2 - (l + 1.0) * (l + 1.0));
    l + a
}

/// One vertical extended-box pass over every column (fixed point, 24 fractional bits): the
/// inner `2r+1` pixels weigh `ww`, the two fractional edge pixels `fw`; borders repeat. Whole
/// rows are combined at a time, which the compiler vectorises.
#[inline(always)]
fn box_pass_columns(img: &mut RgbImage, radius: f32) {
    let r = radius as isize;
    let ww = ((1u32 << 24) as f32 / (radius * 2.0 + 1.0)) as u32;
    let fw = ((1u32 << 24) - (r as u32 * 2 + 1) * ww) / 2;
    let (n, h) = (img.width * 3, img.height as isize);
    let src = img.data.clone();
    let row = |y: isize| {
        let y = y.clamp(0, h - 1) as usize;
        &src[y * n..(y + 1) * n]
    };
    // Window sum for the row before the first: rows -r-1 .. r-1.
    let mut acc = vec![0u32; n];
    for y in -r - 1..r {
        for (a, &v) in acc.iter_mut().zip(row(y)) {
            *a += v as u32;
        }
    }
    for (y, out) in img.data.chunks_exact_mut(n).enumerate() {
        let y = y as isize;
        let (add, sub, far) = (row(y + r), row(y - r - 1), row(y + r + 1));
        for i in 0..n {
            acc[i] = acc[i] + add[i] as u32 - sub[i] as u32;
            let bulk = acc[i] * ww + (sub[i] as u32 + far[i] as u32) * fw;
            out[i] = ((bulk + (1 << 23)) >> 24) as u8;
        }
    }
}

/// Pillow's `ImageFilter.GaussianBlur(radius)`: three extended box passes along rows, then
/// three along columns (rows are blurred as the columns of the transposed image).
pub fn gaussian_blur(img: &mut RgbImage, radius: f32) {
    const PASSES: u32 = 3;
    let r = box_radius(radius, PASSES);
    if r == 0.0 {
        return;
    }
    fast(
        #[inline(always)]
        || {
            let mut t = img.transpose();
            for _ in 0..PASSES {
                box_pass_columns(&mut t, r);
            }
            *img = t.transpose();
            for _ in 0..PASSES {
                box_pass_columns(img, r);
            }
        },
    );
}

/// Which colour operations `ColorJitter` applies, with their factors, in its random order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    Brightness(f32),
    Contrast(f32),
    Saturation(f32),
    Hue(f32),
}

/// torchvision `ColorJitter(b, c, s, h).get_params`: a random order of the four operations
/// with factors uniform in `[max(0, 1-x), 1+x]` (hue in `[-h, h]`).
pub fn color_jitter_params(b: f32, c: f32, s: f32, h: f32, rng: &mut Rng) -> [Jitter; 4] {
    let mut order = [0usize, 1, 2, 3];
    rng.shuffle(&mut order);
    let range =
        |x: f32, rng: &mut Rng| rng.uniform((1.0 - x).max(0.0) as f64, (1.0 + x) as f64) as f32;
    let fb = range(b, rng);
    let fc = range(c, rng);
    let fs = range(s, rng);
    let fh = rng.uniform(-h as f64, h as f64) as f32;
    order.map(|i| match i {
        0 => Jitter::Brightness(fb),
        1 => Jitter::Contrast(fc),
        2 => Jitter::Saturation(fs),
        _ => Jitter::Hue(fh),
    })
}

/// Apply one colour operation.
pub fn apply_jitter(img: &mut RgbImage, j: Jitter) {
    match j {
        Jitter::Brightness(f) => adjust_brightness(img, f),
        Jitter::Contrast(f) => adjust_contrast(img, f),
        Jitter::Saturation(f) => adjust_saturation(img, f),
        Jitter::Hue(f) => adjust_hue(img, f),
    }
}

/// `ToTensor()` + `Normalize(mean, std)` into `out` (3×H×W, channel-major).
pub fn to_tensor(img: &RgbImage, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let plane = img.width * img.height;
    assert_eq!(out.len(), plane * 3, "tensor buffer size");
    // A lookup per channel: 256 values, no per-pixel division.
    let lut: [[f32; 256]; 3] =
        std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - mean[c]) / std[c]));
    fast(
        #[inline(always)]
        || {
            for (i, p) in img.data.chunks_exact(3).enumerate() {
                out[i] = lut[0][p[0] as usize];
                out[plane + i] = lut[1][p[1] as usize];
                out[2 * plane + i] = lut[2][p[2] as usize];
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pillow's conversions written directly (float/double as in `libImaging/Convert.c`).
    fn reference_hue(r: u8, g: u8, b: u8, shift: u8) -> [u8; 3] {
        let maxc = r.max(g).max(b);
        let minc = r.min(g).min(b);
        let (h, s, v) = if maxc == minc {
            (0u8, 0u8, maxc)
        } else {
            let cr = (maxc - minc) as f32;
            let s = cr / maxc as f32;
            let rc = (maxc - r) as f32 / cr;
            let gc = (maxc - g) as f32 / cr;
            let bc = (maxc - b) as f32 / cr;
            let h = if r == maxc {
                bc - gc
            } else if g == maxc {
                2.0 + rc - bc
            } else {
                4.0 + gc - rc
            };
            let h = ((h as f64 / 6.0 + 1.0) % 1.0) as f32;
            let byte = |x: f32| ((x as f64 * 255.0) as i32).clamp(0, 255) as u8;
            (byte(h), byte(s), maxc)
        };
        let h = h.wrapping_add(shift);
        if s == 0 {
            return [v, v, v];
        }
        let hf = h as f64 * 6.0 / 255.0;
        let i = hf.floor() as i32;
        let f = (hf - i as f64) as f32;
        let fs = (s as f64 / 255.0) as f32;
        let vf = v as f64;
        let byte = |x: f64| (x.round() as i32).clamp(0, 255) as u8;
        let p = byte(vf * (1.0 - fs as f64));
        let q = byte(vf * (1.0 - (fs * f) as f64));
        let t = byte(vf * (1.0 - fs as f64 * (1.0 - f as f64)));
        match i.rem_euclid(6) {
            0 => [v, t, p],
            1 => [q, v, p],
            2 => [p, v, t],
            3 => [p, q, v],
            4 => [t, p, v],
            _ => [v, p, q],
        }
    }

    #[test]
    fn hue_tables_equal_the_direct_formulas() {
        for shift in [0u8, 33, 213] {
            for r in (0..=255u8).step_by(3) {
                for g in (0..=255u8).step_by(5) {
                    for b in (0..=255u8).step_by(7) {
                        check(r, g, b, shift);
                    }
                }
            }
        }
        // Ties between channels (which channel counts as the maximum) and greys, all of them.
        for a in 0..=255u8 {
            for c in 0..=255u8 {
                for [r, g, b] in [[a, a, c], [a, c, a], [c, a, a]] {
                    check(r, g, b, 101);
                }
            }
        }
    }

    fn check(r: u8, g: u8, b: u8, shift: u8) {
        let t = hue_tables();
        let [h, s, v] = t.rgb_to_hsv(r, g, b);
        let ours = t.hsv_to_rgb(h.wrapping_add(shift), s, v);
        assert_eq!(
            ours,
            reference_hue(r, g, b, shift),
            "rgb {r},{g},{b} shift {shift}"
        );
    }
}
