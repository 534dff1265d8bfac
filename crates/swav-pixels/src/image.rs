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
        if w < 2 {
            return;
        }
        for row in self.data.chunks_exact_mut(w * 3) {
            let (left, right) = row.split_at_mut(w / 2 * 3);
            let right = &mut right[w % 2 * 3..];
            for (a, b) in left
                .chunks_exact_mut(3)
                .zip(right.chunks_exact_mut(3).rev())
            {
                let pixel = [a[0], a[1], a[2]];
                a.copy_from_slice(b);
                b.copy_from_slice(&pixel);
            }
        }
    }

    /// The image transposed (rows become columns).
    pub fn transpose(&self) -> RgbImage {
        // Strips of TILE columns: their pixels go to TILE output rows, each written in order.
        const TILE: usize = 32;
        let (w, h) = (self.width, self.height);
        let mut out = vec![0u8; self.data.len()];
        if w == 0 || h == 0 {
            return RgbImage::new(h, w, out);
        }
        for (x0, strip) in out.chunks_mut(TILE * h * 3).enumerate() {
            let x0 = x0 * TILE;
            for (y, row) in self.data.chunks_exact(w * 3).enumerate() {
                let pixels = row[x0 * 3..].chunks_exact(3);
                for (dst, px) in strip.chunks_exact_mut(h * 3).zip(pixels) {
                    dst[y * 3..y * 3 + 3].copy_from_slice(px);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An image whose every byte says where it is.
    fn numbered(w: usize, h: usize) -> RgbImage {
        RgbImage::new(w, h, (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect())
    }

    fn pixel(img: &RgbImage, x: usize, y: usize) -> &[u8] {
        let i = (y * img.width + x) * 3;
        &img.data[i..i + 3]
    }

    #[test]
    fn flip_mirrors_each_row() {
        for (w, h) in [(1, 3), (2, 2), (5, 3), (64, 2), (97, 4)] {
            let img = numbered(w, h);
            let mut flipped = img.clone();
            flipped.flip_horizontal();
            for y in 0..h {
                for x in 0..w {
                    assert_eq!(pixel(&flipped, x, y), pixel(&img, w - 1 - x, y), "{w}x{h}");
                }
            }
        }
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        // Sizes around the 32-column strips, and empty images.
        for (w, h) in [(1, 1), (3, 5), (32, 7), (33, 40), (70, 3), (0, 4), (4, 0)] {
            let img = numbered(w, h);
            let t = img.transpose();
            assert_eq!((t.width, t.height), (h, w));
            for y in 0..h {
                for x in 0..w {
                    assert_eq!(pixel(&t, y, x), pixel(&img, x, y), "{w}x{h}");
                }
            }
            assert_eq!(t.transpose(), img);
        }
    }
}
