//! Writers for the exact on-disk formats, used to build test files.
#![allow(dead_code)]

use std::io::Write;

use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;

/// CIFAR-10 batch bytes from (label, 3072-byte image) records.
pub fn cifar_bytes(records: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (l, img) in records {
        assert_eq!(img.len(), 3072);
        out.push(*l);
        out.extend_from_slice(img);
    }
    out
}

/// A deterministic test image: pixel value from its coordinates and a per-image salt.
pub fn pattern(len: usize, salt: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + salt * 97 + i / 7) % 256) as u8)
        .collect()
}

/// An IDX file of unsigned bytes.
pub fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

pub fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

// ---- MATLAB level-5 writer ----------------------------------------------------------------

pub const MI_INT8: u32 = 1;
pub const MI_UINT8: u32 = 2;
pub const MI_INT32: u32 = 5;
pub const MI_UINT32: u32 = 6;
pub const MI_DOUBLE: u32 = 9;
pub const MI_MATRIX: u32 = 14;
pub const MI_COMPRESSED: u32 = 15;
pub const MX_CHAR: u32 = 4;
pub const MX_DOUBLE: u32 = 6;
pub const MX_UINT8: u32 = 9;

#[derive(Clone, Copy)]
pub struct Mat {
    pub big: bool,
}

/// A MATLAB variable to write.
pub struct Var<'a> {
    pub name: &'a str,
    pub class: u32,
    pub dims: Vec<u32>,
    /// `mi*` storage type of `data`.
    pub storage: u32,
    /// Element bytes, already in the file's byte order.
    pub data: Vec<u8>,
    pub complex: bool,
}

impl Mat {
    pub fn u32(&self, v: u32) -> [u8; 4] {
        if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    pub fn f64s(&self, v: &[f64]) -> Vec<u8> {
        v.iter()
            .flat_map(|x| {
                if self.big {
                    x.to_be_bytes()
                } else {
                    x.to_le_bytes()
                }
            })
            .collect()
    }

    pub fn header(&self) -> Vec<u8> {
        let mut h = b"MATLAB 5.0 MAT-file, Platform: relushare-test, Created on: today".to_vec();
        h.resize(116, b' ');
        h.extend_from_slice(&[0u8; 8]);
        if self.big {
            h.extend_from_slice(&0x0100u16.to_be_bytes());
            h.extend_from_slice(b"MI");
        } else {
            h.extend_from_slice(&0x0100u16.to_le_bytes());
            h.extend_from_slice(b"IM");
        }
        h
    }

    fn elem(&self, out: &mut Vec<u8>, ty: u32, data: &[u8]) {
        out.extend_from_slice(&self.u32(ty));
        out.extend_from_slice(&self.u32(data.len() as u32));
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
    }

    fn small_elem(&self, out: &mut Vec<u8>, ty: u32, data: &[u8]) {
        assert!(data.len() <= 4);
        out.extend_from_slice(&self.u32(((data.len() as u32) << 16) | ty));
        let mut d = data.to_vec();
        d.resize(4, 0);
        out.extend_from_slice(&d);
    }

    /// A whole `miMATRIX` element (tag included).
    pub fn matrix(&self, v: &Var) -> Vec<u8> {
        let mut body = Vec::new();
        let flags = v.class | if v.complex { 0x0800 } else { 0 };
        let mut f = self.u32(flags).to_vec();
        f.extend_from_slice(&[0; 4]);
        self.elem(&mut body, MI_UINT32, &f);
        let dims: Vec<u8> = v.dims.iter().flat_map(|d| self.u32(*d)).collect();
        self.elem(&mut body, MI_INT32, &dims);
        if v.name.len() <= 4 {
            self.small_elem(&mut body, MI_INT8, v.name.as_bytes());
        } else {
            self.elem(&mut body, MI_INT8, v.name.as_bytes());
        }
        self.elem(&mut body, v.storage, &v.data);
        if v.complex {
            self.elem(&mut body, v.storage, &v.data);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&self.u32(MI_MATRIX));
        out.extend_from_slice(&self.u32(body.len() as u32));
        out.extend_from_slice(&body);
        out
    }

    /// A `miCOMPRESSED` element holding the matrix.
    pub fn compressed(&self, v: &Var) -> Vec<u8> {
        let z = zlib(&self.matrix(v));
        let mut out = Vec::new();
        out.extend_from_slice(&self.u32(MI_COMPRESSED));
        out.extend_from_slice(&self.u32(z.len() as u32));
        out.extend_from_slice(&z);
        out
    }

    /// A whole file: header plus the given elements.
    pub fn file(&self, elems: &[Vec<u8>]) -> Vec<u8> {
        let mut out = self.header();
        for e in elems {
            out.extend_from_slice(e);
        }
        out
    }
}

/// SVHN-style X value at (row r, col c, channel ch, image k).
pub fn svhn_px(r: usize, c: usize, ch: usize, k: usize) -> u8 {
    ((r * 7 + c * 13 + ch * 50 + k * 3) % 256) as u8
}

/// X (32x32x3xN, column-major uint8) and y (Nx1 double) variables of an SVHN file.
pub fn svhn_vars(m: Mat, labels: &[f64]) -> (Var<'static>, Var<'static>) {
    let n = labels.len();
    let mut x = vec![0u8; 3072 * n];
    for k in 0..n {
        for ch in 0..3 {
            for c in 0..32 {
                for r in 0..32 {
                    x[r + 32 * c + 1024 * ch + 3072 * k] = svhn_px(r, c, ch, k);
                }
            }
        }
    }
    (
        Var {
            name: "X",
            class: MX_UINT8,
            dims: vec![32, 32, 3, n as u32],
            storage: MI_UINT8,
            data: x,
            complex: false,
        },
        Var {
            name: "y",
            class: MX_DOUBLE,
            dims: vec![n as u32, 1],
            storage: MI_DOUBLE,
            data: m.f64s(labels),
            complex: false,
        },
    )
}
