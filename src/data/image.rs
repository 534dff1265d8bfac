//! An 8-bit RGB image, row-major, 3 bytes a pixel: what decoding gives and augmentations take.

/// An RGB image.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// An image from raw bytes (panics on a length mismatch: a programming error).
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> RgbImage {
        assert_eq!(data.len(), width * height * 3, "RGB buffer size");
        RgbImage {
            width,
            height,
            data,
        }
    }

    /// A black image.
    pub fn black(width: usize, height: usize) -> RgbImage {
        RgbImage::new(width, height, vec![0; width * height * 3])
    }

    /// The sub-image at column `x`, row `y`, of `w`×`h` (clipped to the image).
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> RgbImage {
        let w = w.min(self.width.saturating_sub(x));
        let h = h.min(self.height.saturating_sub(y));
        let mut data = Vec::with_capacity(w * h * 3);
        for row in y..y + h {
            let start = (row * self.width + x) * 3;
            data.extend_from_slice(&self.data[start..start + w * 3]);
        }
        RgbImage::new(w, h, data)
    }

    /// Mirror left-right.
    pub fn flip_horizontal(&mut self) {
        let w = self.width;
        for row in self.data.chunks_exact_mut(w * 3) {
            for x in 0..w / 2 {
                for c in 0..3 {
                    row.swap(x * 3 + c, (w - 1 - x) * 3 + c);
                }
            }
        }
    }

    /// The image transposed (rows become columns).
    pub fn transpose(&self) -> RgbImage {
        let (w, h) = (self.width, self.height);
        let mut out = vec![0u8; self.data.len()];
        for y in 0..h {
            for x in 0..w {
                let s = (y * w + x) * 3;
                let d = (x * h + y) * 3;
                out[d..d + 3].copy_from_slice(&self.data[s..s + 3]);
            }
        }
        RgbImage::new(h, w, out)
    }
}

/// Pillow's luma (`convert("L")`): ITU-R 601-2 weights in 16-bit fixed point, rounded.
#[inline(always)]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}
