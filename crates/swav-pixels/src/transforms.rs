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

use crate::image::{luma, RgbImage};
use crate::rng::Rng;
use crate::simd::fast;
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
    // Pillow clips to [0, 255] and truncates. Rust's saturating `as u8` would do the same but
    // is not vectorised; adding 2²³ to a whole number below 2²³ puts it in the mantissa's low
    // bits.
    const TWO_POW_23: f32 = 8_388_608.0;
    let x = a as f32 + alpha * (b as f32 - a as f32);
    (x.clamp(0.0, 255.0).trunc() + TWO_POW_23).to_bits() as u8
}

/// `ImageEnhance.Brightness(img).enhance(f)`: blend with black.
pub fn adjust_brightness(img: &mut RgbImage, f: f32) {
    blend_all(&mut img.data, 0, f);
}

/// Blend every byte of `data` with `towards`: `data = towards + f * (data - towards)`.
fn blend_all(data: &mut [u8], towards: u8, f: f32) {
    fast(
        #[inline(always)]
        || data.iter_mut().for_each(|v| *v = blend(towards, *v, f)),
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
    blend_all(&mut img.data, mean, f);
}

/// `ImageEnhance.Color(img).enhance(f)`: blend with the image's own grey version.
pub fn adjust_saturation(img: &mut RgbImage, f: f32) {
    map_pixels(
        &mut img.data,
        #[inline(always)]
        |[r, g, b]| {
            for i in 0..BLOCK {
                let l = luma(r[i], g[i], b[i]);
                (r[i], g[i], b[i]) = (blend(l, r[i], f), blend(l, g[i], f), blend(l, b[i], f));
            }
        },
    );
}

/// torchvision `adjust_hue` on a Pillow image: to HSV, add `uint8(f * 255)` to H with
/// wrap-around, back to RGB (Pillow's `rgb2hsv` / `hsv2rgb`, bit for bit).
pub fn adjust_hue(img: &mut RgbImage, f: f32) {
    // np.uint8(hue_factor * 255): the float truncated toward zero, then wrapped to a byte.
    let shift = ((f * 255.0) as i32).rem_euclid(256) as u8;
    map_pixels(
        &mut img.data,
        #[inline(always)]
        |rgb| shift_hue(rgb, shift),
    );
}

/// Pixels handed at once to the closure of [`map_pixels`].
const BLOCK: usize = 64;

/// One block of pixels, one array per channel.
type Planes = [[u8; BLOCK]; 3];

/// Apply `f` to every pixel of interleaved RGB `data`, [`BLOCK`] pixels at a time, split into
/// one array per channel: loops over those arrays with no branch, no table and no bounds
/// check are what the compiler turns into vector code (AVX2 or AVX-512 through [`fast`]). The last,
/// partial block is padded with black.
#[inline(always)]
fn map_pixels(data: &mut [u8], f: impl Fn(&mut Planes)) {
    #[inline(always)]
    fn block(px: &mut [u8], f: &impl Fn(&mut Planes)) {
        let px: &mut [u8; 3 * BLOCK] = px.try_into().expect("one block of pixels");
        let mut planes = [[0u8; BLOCK]; 3];
        for i in 0..BLOCK {
            for c in 0..3 {
                planes[c][i] = px[3 * i + c];
            }
        }
        f(&mut planes);
        for i in 0..BLOCK {
            for c in 0..3 {
                px[3 * i + c] = planes[c][i];
            }
        }
    }
    fast(
        #[inline(always)]
        || {
            let mut blocks = data.chunks_exact_mut(3 * BLOCK);
            for px in &mut blocks {
                block(px, &f);
            }
            let tail = blocks.into_remainder();
            if !tail.is_empty() {
                let mut padded = [0u8; 3 * BLOCK];
                padded[..tail.len()].copy_from_slice(tail);
                block(&mut padded, &f);
                tail.copy_from_slice(&padded[..tail.len()]);
            }
        },
    );
}

/// Shift the hue of one block of pixels by `shift` (out of 256).
///
/// Pillow's `rgb2hsv` and `hsv2rgb` (`libImaging/Convert.c`) mix `float` variables with
/// `double` literals; every rounding below happens where C's promotion rules put it, so the
/// result equals Pillow's. Checked while writing: all 2²⁴ colours against Pillow 13 at six
/// shifts, and all 2²⁴ colours at all 256 shifts against a line-by-line translation of the C
/// code (the unit tests' `reference_hue`); the tests compare every hue input with both.
#[inline(always)]
fn shift_hue([r, g, b]: &mut Planes, shift: u8) {
    const N: usize = BLOCK;
    let (mut h, mut s, mut v) = ([0u8; N], [0u8; N], [0u8; N]);
    // rgb2hsv. A grey pixel needs no branch: with cr = 0 the division below gives 0, the red
    // case gives hue 0, and saturation 0 / maxc is 0.
    for i in 0..N {
        let maxc = r[i].max(g[i]).max(b[i]);
        let minc = r[i].min(g[i]).min(b[i]);
        let cr = maxc - minc;
        // Pillow: xc = (maxc − x) / cr; r max: h = bc − gc (float); g max: 2.0 + rc − bc;
        // else 4.0 + gc − rc (double, stored to float).
        let (base, plus, minus) = if r[i] == maxc {
            (0.0, maxc - b[i], maxc - g[i])
        } else if g[i] == maxc {
            (2.0, maxc - r[i], maxc - b[i])
        } else {
            (4.0, maxc - g[i], maxc - r[i])
        };
        // The minimum channel's ratio is exactly 1 (its difference is cr): one division for
        // the other. The double sums are exact, so rounding once to float covers all three
        // cases.
        let other = plus.min(minus) as f32 / (cr as f32).max(1.0);
        let delta = if plus >= minus {
            1.0 - other as f64
        } else {
            other as f64 - 1.0
        };
        let hue = (base + delta) as f32;
        // fmod(h / 6.0 + 1.0, 1.0) for h in [-1, 5]: one subtraction. Multiplying by 1/6
        // instead of dividing (a division costs several multiplications) gives the same hue
        // byte for every reachable h: all of them are in the tests.
        let x = hue as f64 * (1.0 / 6.0) + 1.0;
        let hue = (if x >= 1.0 { x - 1.0 } else { x }) as f32;
        let sat = cr as f32 / (maxc as f32).max(1.0);
        h[i] = truncate_to_byte(hue as f64 * 255.0);
        s[i] = truncate_to_byte(sat as f64 * 255.0);
        v[i] = maxc;
    }
    // hsv2rgb. s == 0 needs no branch either: fs = 0 makes p, q and t all equal v.
    for i in 0..N {
        // h * 6.0 / 255.0 and s / 255.0 as multiplications: the same sector, f and fs for all
        // 256 bytes.
        let hf = h[i].wrapping_add(shift) as f64 * 6.0 * (1.0 / 255.0);
        // floor(hf) for hf in [0, 6] (6 at h = 255, which is sector 0).
        let sector = hf.trunc();
        let f = (hf - sector) as f32;
        let fs = (s[i] as f64 * (1.0 / 255.0)) as f32;
        let vf = v[i] as f64;
        // Each sector takes v, p and one of q (odd sectors) and t (even ones):
        // (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q).
        let odd = (sector == 1.0) | (sector == 3.0) | (sector == 5.0);
        let q_or_t = if odd {
            1.0 - (fs * f) as f64
        } else {
            1.0 - fs as f64 * (1.0 - f as f64)
        };
        let p = round_to_byte(vf * (1.0 - fs as f64));
        let x = round_to_byte(vf * q_or_t);
        let vv = v[i];
        let k = sector;
        r[i] = if (k == 1.0) | (k == 4.0) {
            x
        } else if (k == 2.0) | (k == 3.0) {
            p
        } else {
            vv
        };
        g[i] = if (k == 1.0) | (k == 2.0) {
            vv
        } else if (k == 4.0) | (k == 5.0) {
            p
        } else {
            x
        };
        b[i] = if (k == 2.0) | (k == 5.0) {
            x
        } else if (k == 3.0) | (k == 4.0) {
            vv
        } else {
            p
        };
    }
}

/// `CLIP8((int) x)` for `x >= 0`: truncated toward zero, at most 255. Written with a
/// float-to-bits trick because Rust's saturating `as` casts are not vectorised: adding 2⁵²
/// to a whole number below 2⁵² puts it in the low bits of the mantissa.
#[inline(always)]
fn truncate_to_byte(x: f64) -> u8 {
    const TWO_POW_52: f64 = 4_503_599_627_370_496.0;
    (x.min(255.0).trunc() + TWO_POW_52).to_bits() as u8
}

/// C's `CLIP8(round(x))` (half away from zero) for the products of `hsv2rgb`, vectorisable
/// (see [`truncate_to_byte`]). `trunc(x + 0.5)` differs from `round(x)` only where `x + 0.5`
/// rounds up to a whole number (x = 0.49999999999999994), which no product reaches.
#[inline(always)]
fn round_to_byte(x: f64) -> u8 {
    truncate_to_byte(x + 0.5)
}

/// `convert("L")` replicated to three channels.
pub fn grayscale(img: &mut RgbImage) {
    map_pixels(
        &mut img.data,
        #[inline(always)]
        |[r, g, b]| {
            for i in 0..BLOCK {
                let l = luma(r[i], g[i], b[i]);
                (r[i], g[i], b[i]) = (l, l, l);
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

    /// Pillow's `rgb2hsv` + `hsv2rgb` (`libImaging/Convert.c`) translated line by line: `float`
    /// variables, `double` literals and C's promotions, `round()`, `floor()` and `fmod()`.
    /// (Equal to Pillow 13 for all 2²⁴ colours at shifts 0, 1, 37, 128, 200 and 255.)
    fn reference_hue(r: u8, g: u8, b: u8, shift: u8) -> [u8; 3] {
        let clip8 = |x: i32| x.clamp(0, 255) as u8;
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
            let h: f32 = if r == maxc {
                bc - gc
            } else if g == maxc {
                (2.0 + rc as f64 - bc as f64) as f32
            } else {
                (4.0 + gc as f64 - rc as f64) as f32
            };
            let h = ((h as f64 / 6.0 + 1.0) % 1.0) as f32;
            let (h, s) = ((h as f64 * 255.0) as i32, (s as f64 * 255.0) as i32);
            (clip8(h), clip8(s), maxc)
        };
        let h = h.wrapping_add(shift);
        if s == 0 {
            return [v, v, v];
        }
        let i = (h as f32 as f64 * 6.0 / 255.0).floor() as i32;
        let f = (h as f32 as f64 * 6.0 / 255.0 - i as f32 as f64) as f32;
        let fs = (s as f32 as f64 / 255.0) as f32;
        let vf = v as f32 as f64;
        let p = clip8((vf * (1.0 - fs as f64)).round() as i32);
        let q = clip8((vf * (1.0 - (fs * f) as f64)).round() as i32);
        let t = clip8((vf * (1.0 - fs as f64 * (1.0 - f as f64))).round() as i32);
        match i % 6 {
            0 => [v, t, p],
            1 => [q, v, p],
            2 => [p, v, t],
            3 => [p, q, v],
            4 => [t, p, v],
            _ => [v, p, q],
        }
    }

    /// Every hue input (a channel at 0: all max channels, spreads and differences), every
    /// saturation input (all `maxc`, `maxc − minc` pairs), ties between channels, greys and a
    /// grid, at shifts that move every hue byte to every sector.
    #[test]
    fn hue_shift_equals_pillows_arithmetic() {
        let mut colours = Vec::new();
        for a in 0..=255u8 {
            for c in 0..=255u8 {
                colours.extend([[0, a, c], [a, 0, c], [a, c, 0]]);
                colours.extend([[a, a, c], [a, c, a], [c, a, a]]);
            }
        }
        for r in (0..=255u8).step_by(7) {
            for g in (0..=255u8).step_by(11) {
                for b in (0..=255u8).step_by(13) {
                    colours.push([r, g, b]);
                }
            }
        }
        // An odd count: the last block of pixels is partial.
        colours.push([1, 2, 3]);
        for shift in [0u8, 1, 33, 101, 213, 255] {
            let mut img = RgbImage::new(colours.len(), 1, colours.concat());
            adjust_hue(&mut img, (shift as f32 + 0.5) / 255.0);
            for (rgb, got) in colours.iter().zip(img.data.chunks_exact(3)) {
                let [r, g, b] = *rgb;
                assert_eq!(
                    got,
                    reference_hue(r, g, b, shift),
                    "rgb {rgb:?} shift {shift}"
                );
            }
        }
    }

    #[test]
    fn hue_factor_becomes_numpys_uint8_shift() {
        // np.uint8(f * 255): truncated toward zero, then wrapped (-0.1 * 255 = -25.5 -> 231).
        let mut img = RgbImage::new(1, 1, vec![200, 40, 40]);
        adjust_hue(&mut img, -0.1);
        assert_eq!(img.data, reference_hue(200, 40, 40, 231));
    }
}
