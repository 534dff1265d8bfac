//! Decode JPEG and PNG files to RGB, as Pillow's `Image.open(f).convert("RGB")` does.
//!
//! JPEG can be decoded at 1/2, 1/4 or 1/8 scale straight from the DCT coefficients
//! (`jpeg-decoder`'s `scale`): when every crop cut from an image is shrunk a lot (SwAV's 96-pixel
//! crops), decoding at the smallest scale that keeps enough pixels costs a fraction of a full
//! decode. Grayscale is replicated, alpha dropped, CMYK converted as Pillow converts it.
//!
//! Full-size decodes of colour (YCbCr) JPEGs go to `zune-jpeg` instead, 2-4x faster than
//! `jpeg-decoder` at the same distance from Pillow (mean |difference| ~0.2, at most a few
//! levels, on the fixtures' photos), in strict mode so that corrupt data is an error as it is for
//! Pillow; should it refuse a file, `jpeg-decoder` decodes it (or names the error).

use super::image::RgbImage;
use std::io::Cursor;

/// Why an image could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("not a JPEG or PNG image")]
    UnknownFormat,
    #[error("corrupt JPEG: {0}")]
    Jpeg(String),
    #[error("corrupt PNG: {0}")]
    Png(String),
    #[error("image is {0}x{1} pixels, over the {MAX_PIXELS}-pixel limit")]
    TooLarge(usize, usize),
}

/// Largest image accepted (Pillow's decompression-bomb limit is 89 M pixels).
pub const MAX_PIXELS: usize = 89_478_485;

/// A decoded image and the factor its sides were divided by (1, 2, 4 or 8).
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The pixels.
    pub image: RgbImage,
    /// Full-size width / decoded width.
    pub scale: usize,
    /// Full-size dimensions.
    pub full: (usize, usize),
}

/// Whether the bytes look like an image this module decodes.
pub fn is_image(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xd8, 0xff]) || bytes.starts_with(b"\x89PNG")
}

/// Full-size dimensions without decoding pixels.
pub fn dimensions(bytes: &[u8]) -> Result<(usize, usize), DecodeError> {
    if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        let mut d = jpeg_decoder::Decoder::new(Cursor::new(bytes));
        d.read_info()
            .map_err(|e| DecodeError::Jpeg(e.to_string()))?;
        let info = d
            .info()
            .ok_or_else(|| DecodeError::Jpeg("no header".into()))?;
        Ok((info.width as usize, info.height as usize))
    } else if bytes.starts_with(b"\x89PNG") {
        let r = png::Decoder::new(Cursor::new(bytes))
            .read_info()
            .map_err(|e| DecodeError::Png(e.to_string()))?;
        let i = r.info();
        Ok((i.width as usize, i.height as usize))
    } else {
        Err(DecodeError::UnknownFormat)
    }
}

/// Decode `bytes`; a JPEG is decoded at the smallest DCT scale whose size is at least
/// `min_size` (width, height) — `None` decodes at full size.
pub fn decode(bytes: &[u8], min_size: Option<(usize, usize)>) -> Result<Decoded, DecodeError> {
    if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        decode_jpeg(bytes, min_size)
    } else if bytes.starts_with(b"\x89PNG") {
        let image = decode_png(bytes)?;
        let full = (image.width, image.height);
        Ok(Decoded {
            image,
            scale: 1,
            full,
        })
    } else {
        Err(DecodeError::UnknownFormat)
    }
}

fn decode_jpeg(bytes: &[u8], min_size: Option<(usize, usize)>) -> Result<Decoded, DecodeError> {
    let err = |e: jpeg_decoder::Error| DecodeError::Jpeg(e.to_string());
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    d.read_info().map_err(err)?;
    let info = d
        .info()
        .ok_or_else(|| DecodeError::Jpeg("no header".into()))?;
    let full = (info.width as usize, info.height as usize);
    if full.0 * full.1 > MAX_PIXELS || full.0 == 0 || full.1 == 0 {
        return Err(DecodeError::TooLarge(full.0, full.1));
    }
    let (w, h) = match min_size {
        Some((mw, mh)) => {
            let (w, h) = d
                .scale(mw.clamp(1, 65535) as u16, mh.clamp(1, 65535) as u16)
                .map_err(err)?;
            (w as usize, h as usize)
        }
        None => full,
    };
    if (w, h) == full && info.pixel_format == jpeg_decoder::PixelFormat::RGB24 {
        if let Some(image) = decode_full_rgb(bytes, full) {
            return Ok(Decoded {
                image,
                scale: 1,
                full,
            });
        }
    }
    let pixels = d.decode().map_err(err)?;
    let info = d
        .info()
        .ok_or_else(|| DecodeError::Jpeg("no header".into()))?;
    let n = w * h;
    let data = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        jpeg_decoder::PixelFormat::L16 => pixels
            .chunks_exact(2)
            .flat_map(|c| [c[0], c[0], c[0]])
            .collect(),
        jpeg_decoder::PixelFormat::CMYK32 => pixels
            .chunks_exact(4)
            .flat_map(|p| cmyk_to_rgb(p[0], p[1], p[2], p[3]))
            .collect(),
    };
    if data.len() != n * 3 {
        return Err(DecodeError::Jpeg(format!(
            "decoded {} bytes for {w}x{h}",
            data.len()
        )));
    }
    Ok(Decoded {
        image: RgbImage::new(w, h, data),
        scale: full.0.div_ceil(w.max(1)),
        full,
    })
}

/// A full-size decode by `zune-jpeg`, limited to the size the header announced (`full`, already
/// checked against [`MAX_PIXELS`]); `None` when it refuses the file or disagrees on the size.
fn decode_full_rgb(bytes: &[u8], full: (usize, usize)) -> Option<RgbImage> {
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_strict_mode(true)
        .set_max_width(full.0)
        .set_max_height(full.1);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
    let data = d.decode().ok()?;
    let (w, h) = d.dimensions()?;
    ((w, h) == full && data.len() == w * h * 3).then(|| RgbImage::new(w, h, data))
}

/// Pillow's CMYK → RGB: each channel is (255 - c) scaled by (255 - k) / 255, rounded.
fn cmyk_to_rgb(c: u8, m: u8, y: u8, k: u8) -> [u8; 3] {
    let nk = 255 - k as u32;
    let f = |v: u8| {
        let t = v as u32 * nk + 128;
        (nk - ((t + (t >> 8)) >> 8)) as u8
    };
    [f(c), f(m), f(y)]
}

fn decode_png(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    let err = |e: png::DecodingError| DecodeError::Png(e.to_string());
    let mut dec = png::Decoder::new(Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(err)?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    if w * h > MAX_PIXELS || w == 0 || h == 0 {
        return Err(DecodeError::TooLarge(w, h));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| DecodeError::Png("image too large".into()))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(err)?;
    buf.truncate(frame.buffer_size());
    let data: Vec<u8> = match frame.color_type {
        png::ColorType::Rgb => buf,
        png::ColorType::Rgba => buf
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        png::ColorType::Grayscale => buf.iter().flat_map(|&v| [v, v, v]).collect(),
        png::ColorType::GrayscaleAlpha => buf
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        png::ColorType::Indexed => return Err(DecodeError::Png("palette was not expanded".into())),
    };
    if data.len() != w * h * 3 {
        return Err(DecodeError::Png(format!(
            "decoded {} bytes for {w}x{h}",
            data.len()
        )));
    }
    Ok(RgbImage::new(w, h, data))
}
