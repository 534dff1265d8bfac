//! The hostile-input corpus: files made here, each with the error it must produce.
//!
//! Add a case whenever a new way to break a reader is found. Every case must fail with a
//! one-line error naming the file, quickly, in bounded memory, and leave no output.

use crate::fixture;
use std::io::Write;

/// One hostile file and a fragment of the error it must give.
pub struct Case {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub expect: &'static str,
}

fn pk(body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, 4];
    v.extend_from_slice(body);
    v
}

/// A numpy array pickle with the given shape ints and data length (f4).
fn array(shape: &[i64], data_len: usize, dtype: &str) -> Vec<u8> {
    let mut v = vec![0x80, 2];
    v.extend_from_slice(
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R(K\x01(",
    );
    for &d in shape {
        v.push(b'J');
        v.extend_from_slice(&(d as i32).to_le_bytes());
    }
    v.extend_from_slice(b"tcnumpy\ndtype\n");
    v.push(b'X');
    v.extend_from_slice(&(dtype.len() as u32).to_le_bytes());
    v.extend_from_slice(dtype.as_bytes());
    v.extend_from_slice(
        b"\x89\x88\x87R(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89B",
    );
    v.extend_from_slice(&(data_len as u32).to_le_bytes());
    v.extend(std::iter::repeat_n(0u8, data_len));
    v.extend_from_slice(b"tb.");
    v
}

fn zip_with(entries: &[(&str, &[u8], bool)]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data, deflate) in entries {
        let m = if *deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        zw.start_file(
            *name,
            SimpleFileOptions::default()
                .compression_method(m)
                .large_file(true),
        )
        .unwrap();
        zw.write_all(data).unwrap();
    }
    zw.finish().unwrap().into_inner()
}

/// Every case.
pub fn cases() -> Vec<Case> {
    let real = std::fs::read(fixture("passl_swav_tiny.pdparams")).unwrap();
    let torch = std::fs::read(fixture("fair_swav_tiny.pth.tar")).unwrap();
    let legacy = std::fs::read(fixture("fair_swav_tiny_legacy.pth.tar")).unwrap();
    let st = std::fs::read(fixture("reference_tiny.safetensors")).unwrap();
    let mut c = vec![
        Case {
            name: "empty.pdparams",
            bytes: vec![],
            expect: "empty",
        },
        Case {
            name: "quota.pth.tar",
            bytes: b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title>"
                .to_vec(),
            expect: "HTML page",
        },
        Case {
            name: "random.pth",
            bytes: b"this is not a model at all".to_vec(),
            expect: "not a checkpoint",
        },
        Case {
            name: "gzip.pth",
            bytes: b"\x1f\x8b\x08\x00rest".to_vec(),
            expect: "gzip",
        },
        Case {
            name: "os_system.pdparams",
            bytes: pk(b"\x8c\x02os\x8c\x06system\x93\x8c\x02id\x85R."),
            expect: "refused pickle global os.system",
        },
        Case {
            name: "posix_system_p2.pdparams",
            bytes: b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R.".to_vec(),
            expect: "refused pickle global posix.system",
        },
        Case {
            name: "subprocess_newobj.pdparams",
            bytes: pk(b"\x8c\nsubprocess\x8c\x05Popen\x93\x8c\x02id\x85\x81."),
            expect: "refused pickle global subprocess.Popen",
        },
        Case {
            name: "eval_code.pdparams",
            bytes: pk(
                b"\x8c\x08builtins\x8c\x04eval\x93\x8c\x1d__import__('os').system('id')\x85R.",
            ),
            expect: "refused pickle global builtins.eval",
        },
        Case {
            name: "getattr.pdparams",
            bytes: pk(b"\x8c\x08builtins\x8c\x07getattr\x93\x8c\x02os\x8c\x06system\x86R."),
            expect: "refused pickle global builtins.getattr",
        },
        Case {
            name: "no_stop.pdparams",
            bytes: pk(b"}q\x00"),
            expect: "truncated pickle",
        },
        Case {
            name: "ext.pdparams",
            bytes: pk(b"\x82\x01."),
            expect: "EXT",
        },
        Case {
            name: "oob_buffer.pdparams",
            bytes: b"\x80\x05\x97.".to_vec(),
            expect: "out-of-band",
        },
        Case {
            name: "persid.pdparams",
            bytes: pk(b"X\x01\x00\x00\x000Q."),
            expect: "PERSID",
        },
        Case {
            name: "bad_memo.pdparams",
            bytes: pk(b"j\xff\xff\x00\x00."),
            expect: "never stored",
        },
        Case {
            name: "setitem_on_list.pdparams",
            bytes: pk(b"]K\x01K\x02s."),
            expect: "SETITEM on a list",
        },
        Case {
            name: "huge_string.pdparams",
            bytes: pk(b"\x8d\xff\xff\xff\xff\xff\xff\x00\x00abc."),
            expect: "truncated",
        },
        Case {
            name: "proto9.pdparams",
            bytes: b"\x80\x05\x80\x09.".to_vec(),
            expect: "protocol 9",
        },
        Case {
            name: "shape_claims_more.pdparams",
            bytes: array(&[1_000_000_000], 16, "f4"),
            expect: "needs 4000000000 bytes but the file holds 16",
        },
        Case {
            name: "negative_dim.pdparams",
            bytes: array(&[-4], 16, "f4"),
            expect: "negative array dimension -4",
        },
        Case {
            name: "object_dtype.pdparams",
            bytes: array(&[2], 16, "O8"),
            expect: "not a tensor type",
        },
        Case {
            name: "truncated_zip.pth",
            bytes: torch[..torch.len() / 2].to_vec(),
            expect: "PyTorch file",
        },
        Case {
            name: "truncated_legacy.pth",
            bytes: legacy[..legacy.len() / 3].to_vec(),
            expect: "PyTorch file",
        },
        Case {
            name: "zip_bomb.pth",
            bytes: zip_with(&[
                ("archive/data.pkl", &vec![0u8; 120 << 20], true),
                ("archive/version", b"3\n", false),
            ]),
            expect: "PyTorch file",
        },
        Case {
            name: "zip_no_pickle.pth",
            bytes: zip_with(&[("archive/version", b"3\n", false)]),
            expect: "PyTorch file",
        },
        Case {
            name: "st_header_past_end.safetensors",
            bytes: {
                let mut v = (1u64 << 40).to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            },
            expect: "not a checkpoint",
        },
        Case {
            name: "st_bad_json.safetensors",
            bytes: {
                let mut v = 8u64.to_le_bytes().to_vec();
                v.extend_from_slice(b"{\"a\":1 }");
                v
            },
            expect: "safetensors",
        },
        Case {
            name: "st_overlap.safetensors",
            bytes: {
                let h = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
                let mut h = h.to_vec();
                h.resize(h.len().next_multiple_of(8), b' ');
                let mut v = (h.len() as u64).to_le_bytes().to_vec();
                v.extend_from_slice(&h);
                v.extend_from_slice(&[0; 16]);
                v
            },
            expect: "safetensors",
        },
        Case {
            name: "truncated.safetensors",
            bytes: st[..st.len() - 100].to_vec(),
            expect: "safetensors",
        },
        Case {
            name: "zstd_bomb.safetensors.zst",
            bytes: zstd::encode_all(std::io::Cursor::new(vec![0u8; 100 << 20]), 3).unwrap(),
            expect: "decompression bomb",
        },
    ];
    // PyTorch containers whose pickles call what torch.load(weights_only=True) refuses, or hold
    // a second pickle after the first: the real fixture's data.pkl, altered.
    let data_pkl = {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(&torch)).unwrap();
        let name = z
            .file_names()
            .find(|n| n.as_ref().is_ok_and(|n| n.ends_with("/data.pkl")))
            .unwrap()
            .unwrap()
            .to_string();
        let mut d = Vec::new();
        std::io::Read::read_to_end(&mut z.by_name(&name).unwrap(), &mut d).unwrap();
        d
    };
    // `posix.system('id')`, its result popped, then the genuine state dict.
    let system = b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R0";
    let mut called = system.to_vec();
    called.extend_from_slice(&data_pkl[2..]);
    let mut appended = data_pkl.clone();
    appended.extend_from_slice(b"\x80\x02K\x01.");
    let evaluated =
        b"\x80\x02}X\x01\x00\x00\x00acbuiltins\neval\nX\x03\x00\x00\x001+1\x85Rs.".to_vec();
    // `posix.system` only named (and popped), never called: torch's weights-only loader
    // refuses the name itself.
    let mut named = b"\x80\x02cposix\nsystem\n0".to_vec();
    named.extend_from_slice(&data_pkl[2..]);
    for (name, pickle, expect) in [
        (
            "torch_posix_system.pth",
            called,
            "refused pickle global posix.system",
        ),
        (
            "torch_eval_values.pth",
            evaluated,
            "refused pickle global builtins.eval",
        ),
        (
            "torch_second_pickle.pth",
            appended,
            "after the pickle's STOP",
        ),
        (
            "torch_posix_system_named.pth",
            named,
            "refused pickle global posix.system",
        ),
        // numpy is outside torch's default weights-only allowlist too.
        (
            "torch_numpy_scalar.pth",
            b"\x80\x02}X\x03\x00\x00\x00acccnumpy.core.multiarray\nscalar\ns.".to_vec(),
            "refused pickle global numpy.core.multiarray.scalar",
        ),
    ] {
        c.push(Case {
            name,
            bytes: zip_with(&[
                ("archive/data.pkl", &pickle, false),
                ("archive/version", b"3\n", false),
            ]),
            expect,
        });
    }
    // The legacy stream with the same call before its system-information pickle.
    let first_two = {
        let one = swav::checkpoint::pickle::parse(&legacy).unwrap().end;
        one + swav::checkpoint::pickle::parse(&legacy[one..]).unwrap().end
    };
    let mut legacy_called = legacy[..first_two].to_vec();
    legacy_called.extend_from_slice(system);
    legacy_called.extend_from_slice(&legacy[first_two..]);
    c.push(Case {
        name: "legacy_posix_system.pth",
        bytes: legacy_called,
        expect: "refused pickle global posix.system",
    });
    // The tar container (made by tests/fixtures/generate/make_torch_tar.py) with the call in
    // the pickles between its raw data, or a pickle after its last one.
    for (name, expect) in [
        (
            "torch_tar_storages_system.pth",
            "tar member storages: refused pickle global posix.system",
        ),
        (
            "torch_tar_tensors_system.pth",
            "tar member tensors: refused pickle global posix.system",
        ),
        ("torch_tar_trailing.pth", "bytes after its last pickle"),
    ] {
        c.push(Case {
            name,
            bytes: std::fs::read(fixture(name)).unwrap(),
            expect,
        });
    }
    // A second pickle after a Paddle file's.
    let mut paddle_appended = real.clone();
    paddle_appended.extend_from_slice(b"\x80\x02K\x01.");
    c.push(Case {
        name: "paddle_second_pickle.pdparams",
        bytes: paddle_appended,
        expect: "after the pickle's STOP",
    });
    // A memo bomb: each level lists the previous one twice (2^40 elements if copied).
    let mut bomb = vec![0x80, 4, b']', 0x94];
    for i in 0..40u32 {
        bomb.extend_from_slice(b"(j");
        bomb.extend_from_slice(&i.to_le_bytes());
        bomb.push(b'j');
        bomb.extend_from_slice(&i.to_le_bytes());
        bomb.extend_from_slice(b"l\x94");
    }
    bomb.push(b'.');
    c.push(Case {
        name: "memo_bomb.pdparams",
        bytes: bomb,
        expect: "too deep or too large",
    });
    // A million nested lists: ] ] ] ... then APPEND each into the one below.
    let mut nest = vec![0x80, 4];
    nest.extend(std::iter::repeat_n(b']', 1_000_000));
    nest.extend(std::iter::repeat_n(b'a', 999_999));
    nest.push(b'.');
    c.push(Case {
        name: "nested_lists.pdparams",
        bytes: nest,
        expect: "too deep",
    });
    // A million MARKs.
    let mut marks = vec![0x80, 4];
    marks.extend(std::iter::repeat_n(b'(', 1_000_000));
    marks.push(b'.');
    c.push(Case {
        name: "marks.pdparams",
        bytes: marks,
        expect: "too large",
    });
    // Protocol-2 array data (latin-1 text) that is not latin-1: a character above U+00FF, and
    // a lead byte without its continuation.
    let p2 = std::fs::read(fixture("passl_swav_tiny_np1_p2.pdparams")).unwrap();
    let at = first_latin1_sequence(&p2);
    for (name, at, byte, expect) in [
        (
            "latin1_above_ff_p2.pdparams",
            at,
            0xc5,
            "character above U+00FF",
        ),
        ("latin1_broken_p2.pdparams", at + 1, b'A', "not UTF-8"),
    ] {
        let mut bytes = p2.clone();
        bytes[at] = byte;
        c.push(Case {
            name,
            bytes,
            expect,
        });
    }
    // Truncations of a real Paddle file at several points.
    for (i, cut) in [3usize, 1000, real.len() / 2, real.len() - 1]
        .into_iter()
        .enumerate()
    {
        let name: &'static str = [
            "cut_3.pdparams",
            "cut_1000.pdparams",
            "cut_half.pdparams",
            "cut_last.pdparams",
        ][i];
        c.push(Case {
            name,
            bytes: real[..cut].to_vec(),
            expect: "truncated",
        });
    }
    c
}

/// The offset of the first two-byte sequence in the first array payload of a protocol-2
/// pickle: a BINUNICODE string over 4 KiB whose characters are all ≤ U+00FF (the text
/// `_codecs.encode(…, 'latin1')` turns into bytes).
fn first_latin1_sequence(p: &[u8]) -> usize {
    (0..p.len().saturating_sub(5))
        .find_map(|i| {
            let n = u32::from_le_bytes(p[i + 1..i + 5].try_into().unwrap()) as usize;
            if p[i] != b'X' || n <= 4096 {
                return None;
            }
            let data = p.get(i + 5..i + 5 + n)?;
            let text = std::str::from_utf8(data).ok()?;
            let lead = data.iter().position(|&b| b == 0xc2 || b == 0xc3)?;
            text.chars().all(|c| c <= '\u{ff}').then_some(i + 5 + lead)
        })
        .expect("a latin-1 payload in the protocol-2 fixture")
}
