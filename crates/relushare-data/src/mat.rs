//! A reader for MATLAB level-5 MAT-files (the format of SVHN's `*_32x32.mat`), written for
//! hostile input: every length is checked against its container before use, payloads are read
//! into buffers that grow only as bytes arrive, and `miCOMPRESSED` (zlib) elements are
//! decompressed as a stream. Only numeric, real, full (non-sparse) arrays are returned; other
//! variables (cells, structs, strings, sparse) are skipped.
//!
//! Layout: a 128-byte header (text starting "MATLAB", subsystem offset, version 0x0100, endian
//! indicator "IM"/"MI"), then data elements: an 8-byte tag (type u32, byte count u32) or a
//! 4-byte "small element" tag (count in the upper 16 bits, data in the next 4 bytes), data padded
//! to 8 bytes. A matrix (`miMATRIX`) holds sub-elements: array flags, dimensions, name, real part.
//! The crate `matfile` (0.5) also reads these files, but it decodes every variable of a file held
//! whole in memory (measured: 650 MB peak for SVHN's training file); this reader streams, decodes
//! only the wanted variables, and ties every allocation to the input's real size, with errors
//! that name the file and the problem.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use flate2::read::ZlibDecoder;

use crate::error::{DataError, FormatProblem};
use crate::util::{read_err, read_exact_vec_reserve, MAX_PAYLOAD};

/// Data element types (MATLAB `mi*`).
pub mod mi {
    pub const INT8: u32 = 1;
    pub const UINT8: u32 = 2;
    pub const INT16: u32 = 3;
    pub const UINT16: u32 = 4;
    pub const INT32: u32 = 5;
    pub const UINT32: u32 = 6;
    pub const SINGLE: u32 = 7;
    pub const DOUBLE: u32 = 9;
    pub const INT64: u32 = 12;
    pub const UINT64: u32 = 13;
    pub const MATRIX: u32 = 14;
    pub const COMPRESSED: u32 = 15;
    pub const UTF8: u32 = 16;
}

/// Array classes (MATLAB `mx*_CLASS`).
pub mod mx {
    pub const CELL: u8 = 1;
    pub const STRUCT: u8 = 2;
    pub const OBJECT: u8 = 3;
    pub const CHAR: u8 = 4;
    pub const SPARSE: u8 = 5;
    pub const DOUBLE: u8 = 6;
    pub const UINT8: u8 = 9;
    pub const UINT64: u8 = 15;
}

/// Largest number of dimensions accepted.
const MAX_DIMS: u32 = 32;
/// Largest variable name accepted (MATLAB's limit is 63; leave room).
const MAX_NAME: u32 = 4096;

/// A numeric MATLAB array as stored: column-major elements of `storage` type.
#[derive(Debug, Clone, PartialEq)]
pub struct MatArray {
    pub name: String,
    /// `mx*` class of the array (what MATLAB shows), which may differ from the storage type.
    pub class: u8,
    pub dims: Vec<usize>,
    /// `mi*` type of the stored elements.
    pub storage: u32,
    pub big_endian: bool,
    pub bytes: Vec<u8>,
}

impl MatArray {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.bytes.len() / elem_size(self.storage).unwrap_or(1)
    }

    /// Element `i` as f64.
    pub fn get_f64(&self, i: usize) -> f64 {
        let s = elem_size(self.storage).unwrap_or(1);
        let b = &self.bytes[i * s..(i + 1) * s];
        let mut a = [0u8; 8];
        a[..s].copy_from_slice(b);
        if self.big_endian {
            a[..s].reverse();
        }
        match self.storage {
            mi::INT8 => a[0] as i8 as f64,
            mi::UINT8 => a[0] as f64,
            mi::INT16 => i16::from_le_bytes([a[0], a[1]]) as f64,
            mi::UINT16 => u16::from_le_bytes([a[0], a[1]]) as f64,
            mi::INT32 => i32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f64,
            mi::UINT32 => u32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f64,
            mi::SINGLE => f32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f64,
            mi::DOUBLE => f64::from_le_bytes(a),
            mi::INT64 => i64::from_le_bytes(a) as f64,
            mi::UINT64 => u64::from_le_bytes(a) as f64,
            _ => f64::NAN,
        }
    }

    /// All elements as u8, failing (with the element index) on any value that is not an integer
    /// in 0..=255.
    pub fn to_u8(&self, path: &Path) -> Result<Vec<u8>, DataError> {
        if self.storage == mi::UINT8 {
            return Ok(self.bytes.clone());
        }
        let n = self.numel();
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let v = self.get_f64(i);
            if !(0.0..=255.0).contains(&v) || v.fract() != 0.0 {
                return Err(DataError::format(
                    path,
                    FormatProblem::Corrupt,
                    format!(
                        "variable `{}` element {i} is {v}, not a byte value",
                        self.name
                    ),
                ));
            }
            out.push(v as u8);
        }
        Ok(out)
    }
}

/// Size in bytes of one element of numeric storage type `ty`.
pub fn elem_size(ty: u32) -> Option<usize> {
    match ty {
        mi::INT8 | mi::UINT8 => Some(1),
        mi::INT16 | mi::UINT16 => Some(2),
        mi::INT32 | mi::UINT32 | mi::SINGLE => Some(4),
        mi::DOUBLE | mi::INT64 | mi::UINT64 => Some(8),
        _ => None,
    }
}

fn corrupt(path: &Path, detail: impl Into<String>) -> DataError {
    DataError::format(path, FormatProblem::Corrupt, detail)
}

/// Reads the numeric variables named in `wanted` from a MAT-file on disk.
pub fn read_mat_file(path: &Path, wanted: &[&str]) -> Result<Vec<MatArray>, DataError> {
    let f = File::open(path).map_err(|e| DataError::io(path, e))?;
    let len = f.metadata().map_err(|e| DataError::io(path, e))?.len();
    read_mat(
        &mut BufReader::with_capacity(1 << 20, f),
        Some(len),
        wanted,
        path,
    )
}

/// Reads the numeric variables named in `wanted` from MAT-file bytes held in memory.
pub fn read_mat_bytes(
    bytes: &[u8],
    wanted: &[&str],
    path: &Path,
) -> Result<Vec<MatArray>, DataError> {
    read_mat(&mut &bytes[..], Some(bytes.len() as u64), wanted, path)
}

/// Reads the numeric variables named in `wanted` from a MAT-file stream of (if known) `len` bytes.
pub fn read_mat<R: Read>(
    r: &mut R,
    len: Option<u64>,
    wanted: &[&str],
    path: &Path,
) -> Result<Vec<MatArray>, DataError> {
    let mut header = [0u8; 128];
    r.read_exact(&mut header).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => DataError::format(
            path,
            FormatProblem::BadMagic,
            "shorter than the 128-byte MAT-file header",
        ),
        _ => DataError::io(path, e),
    })?;
    if !header.starts_with(b"MATLAB") {
        return Err(DataError::format(
            path,
            FormatProblem::BadMagic,
            "header text does not start with \"MATLAB\" (not a MATLAB v5 MAT-file)",
        ));
    }
    let big = match &header[126..128] {
        b"IM" => false,
        b"MI" => true,
        other => {
            return Err(DataError::format(
                path,
                FormatProblem::BadMagic,
                format!("endian indicator {other:?} is neither \"IM\" nor \"MI\""),
            ))
        }
    };
    let version = if big {
        u16::from_be_bytes([header[124], header[125]])
    } else {
        u16::from_le_bytes([header[124], header[125]])
    };
    if version != 0x0100 {
        let what = if version == 0x0200 {
            "MATLAB v7.3 (HDF5) files are not supported; save with -v7 or -v6".to_string()
        } else {
            format!("MAT-file version {version:#06x}, expected 0x0100 (level 5)")
        };
        return Err(DataError::format(path, FormatProblem::Unsupported, what));
    }
    let mut remaining = len.map(|l| l.saturating_sub(128));
    let mut out = Vec::new();
    loop {
        let mut tagb = [0u8; 8];
        let got = read_full(r, &mut tagb).map_err(|e| read_err(path, e, "an element tag"))?;
        if got == 0 {
            break;
        }
        if got < 8 {
            return Err(DataError::format(
                path,
                FormatProblem::ShortRecord,
                "file ends inside an element tag",
            ));
        }
        let (ty, n) = (u32_at(&tagb, 0, big), u32_at(&tagb, 4, big));
        if ty >> 16 != 0 {
            return Err(corrupt(path, "small data element at top level"));
        }
        let n = n as u64;
        if let Some(rem) = remaining.as_mut() {
            *rem = rem.saturating_sub(8);
            if n > *rem {
                return Err(DataError::format(
                    path,
                    FormatProblem::ShortRecord,
                    format!(
                        "element of type {ty} announces {n} bytes, only {rem} remain in the file"
                    ),
                ));
            }
        }
        let padded = if ty == mi::COMPRESSED { n } else { pad8(n) };
        // The element's size is only trusted (for reserving buffers) once checked against the
        // file's real length.
        let trusted = if remaining.is_some() { n } else { 0 };
        let mut body = (&mut *r).take(padded);
        match ty {
            mi::MATRIX => {
                let mut s = Sub {
                    r: &mut body,
                    big,
                    path,
                    reserve: trusted,
                };
                if let Some(a) = parse_matrix(&mut s, n, wanted)? {
                    out.push(a);
                }
            }
            mi::COMPRESSED => {
                let mut z = ZlibDecoder::new(&mut body);
                let mut itag = [0u8; 8];
                let got = read_full(&mut z, &mut itag)
                    .map_err(|e| read_err(path, e, "a compressed element"))?;
                if got == 8 {
                    let (ity, in_) = (u32_at(&itag, 0, big), u32_at(&itag, 4, big) as u64);
                    if ity == mi::MATRIX {
                        let mut limited = (&mut z).take(in_);
                        // Real data rarely compresses more than 4:1; a bomb only gets
                        // buffers that grow as it really decompresses.
                        let mut s = Sub {
                            r: &mut limited,
                            big,
                            path,
                            reserve: trusted.saturating_mul(4),
                        };
                        if let Some(a) = parse_matrix(&mut s, in_, wanted)? {
                            out.push(a);
                        }
                    }
                } else if got != 0 {
                    return Err(DataError::format(
                        path,
                        FormatProblem::ShortRecord,
                        "compressed element ends inside its inner tag",
                    ));
                }
            }
            _ => {}
        }
        // Skip whatever is left of this element (unwanted variables, padding).
        io::copy(&mut body, &mut io::sink()).map_err(|e| read_err(path, e, "an element"))?;
        let consumed = padded - body.limit();
        if consumed < n {
            return Err(DataError::format(
                path,
                FormatProblem::ShortRecord,
                format!("file ends inside an element of type {ty} ({consumed} of {n} bytes)"),
            ));
        }
        if let Some(rem) = remaining.as_mut() {
            *rem = rem.saturating_sub(consumed);
        }
        if out.len() == wanted.len() && !wanted.is_empty() {
            break;
        }
    }
    for w in wanted {
        if !out.iter().any(|a| a.name == *w) {
            return Err(DataError::format(
                path,
                FormatProblem::CountMismatch,
                format!("no numeric variable named `{w}` in the file"),
            ));
        }
    }
    Ok(out)
}

fn pad8(n: u64) -> u64 {
    n.div_ceil(8).saturating_mul(8)
}

fn u32_at(b: &[u8], at: usize, big: bool) -> u32 {
    let a = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    if big {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A reader of sub-elements inside one matrix element (bounded by the element's byte count).
struct Sub<'a, R: Read> {
    r: &'a mut R,
    big: bool,
    path: &'a Path,
    /// How much a payload buffer may reserve up front (bounded by the real input size).
    reserve: u64,
}

/// A sub-element: its type and payload.
struct Elem {
    ty: u32,
    data: Vec<u8>,
}

impl<R: Read> Sub<'_, R> {
    /// Reads the next sub-element whose payload may be at most `max` bytes (padding consumed).
    fn elem(&mut self, what: &str, max: u64) -> Result<Elem, DataError> {
        let mut tag = [0u8; 8];
        self.r
            .read_exact(&mut tag[..4])
            .map_err(|e| read_err(self.path, e, what))?;
        let first = u32_at(&tag, 0, self.big);
        if first >> 16 != 0 {
            // Small data element: count in the upper 16 bits, data in the next 4 bytes.
            let (ty, n) = (first & 0xffff, first >> 16);
            if n > 4 {
                return Err(corrupt(
                    self.path,
                    format!("small element of {what} claims {n} bytes (max 4)"),
                ));
            }
            self.r
                .read_exact(&mut tag[4..])
                .map_err(|e| read_err(self.path, e, what))?;
            return Ok(Elem {
                ty,
                data: tag[4..4 + n as usize].to_vec(),
            });
        }
        self.r
            .read_exact(&mut tag[4..])
            .map_err(|e| read_err(self.path, e, what))?;
        let n = u32_at(&tag, 4, self.big) as u64;
        if n > max {
            return Err(DataError::format(
                self.path,
                FormatProblem::TooLarge,
                format!("{what} announces {n} bytes (limit {max})"),
            ));
        }
        let data = read_exact_vec_reserve(self.r, n, self.reserve, self.path, what)?;
        // Padding to 8 bytes; a compressed stream may legitimately end without it.
        let pad = pad8(n) - n;
        let mut skip = [0u8; 8];
        let _ = read_full(self.r, &mut skip[..pad as usize])
            .map_err(|e| read_err(self.path, e, what))?;
        Ok(Elem { ty: first, data })
    }
}

/// Parses one matrix element of `n` bytes; `Ok(None)` for variables that are skipped.
fn parse_matrix<R: Read>(
    s: &mut Sub<'_, R>,
    n: u64,
    wanted: &[&str],
) -> Result<Option<MatArray>, DataError> {
    if n == 0 {
        return Ok(None); // an empty array
    }
    let path = s.path;
    let flags = s.elem("the array flags", 8)?;
    if flags.ty != mi::UINT32 || flags.data.len() != 8 {
        return Err(corrupt(
            path,
            format!(
                "array flags have type {} and {} bytes (expected miUINT32, 8 bytes)",
                flags.ty,
                flags.data.len()
            ),
        ));
    }
    let fw = u32_at(&flags.data, 0, s.big);
    let class = (fw & 0xff) as u8;
    let complex = fw & 0x0800 != 0;
    if matches!(
        class,
        mx::CELL | mx::STRUCT | mx::OBJECT | mx::SPARSE | mx::CHAR
    ) {
        return Ok(None);
    }
    if !(mx::DOUBLE..=mx::UINT64).contains(&class) {
        return Err(corrupt(path, format!("unknown array class {class}")));
    }
    let dims_el = s.elem("the dimensions", 4 * MAX_DIMS as u64)?;
    if dims_el.ty != mi::INT32 || dims_el.data.len() % 4 != 0 || dims_el.data.len() < 8 {
        return Err(corrupt(
            path,
            format!(
                "dimensions element has type {} and {} bytes (expected miINT32, >= 2 dims)",
                dims_el.ty,
                dims_el.data.len()
            ),
        ));
    }
    let mut dims = Vec::new();
    let mut numel: u64 = 1;
    for c in dims_el.data.chunks_exact(4) {
        let d = u32_at(c, 0, s.big) as i32;
        if d < 0 {
            return Err(corrupt(path, format!("negative dimension {d}")));
        }
        numel = numel.saturating_mul(d as u64);
        dims.push(d as usize);
    }
    let name_el = s.elem("the array name", MAX_NAME as u64)?;
    if name_el.ty != mi::INT8 && name_el.ty != mi::UINT8 && name_el.ty != mi::UTF8 {
        return Err(corrupt(
            path,
            format!("array name has element type {}", name_el.ty),
        ));
    }
    let name = String::from_utf8_lossy(&name_el.data).into_owned();
    if !wanted.contains(&name.as_str()) {
        return Ok(None);
    }
    if complex {
        return Err(DataError::format(
            path,
            FormatProblem::Unsupported,
            format!("variable `{name}` is complex"),
        ));
    }
    let real = s.elem(&format!("the data of `{name}`"), MAX_PAYLOAD)?;
    let Some(size) = elem_size(real.ty) else {
        return Err(corrupt(
            path,
            format!("variable `{name}` has data of element type {}", real.ty),
        ));
    };
    if real.data.len() % size != 0 || (real.data.len() / size) as u64 != numel {
        return Err(DataError::format(
            path,
            FormatProblem::CountMismatch,
            format!(
                "variable `{name}` has dimensions {dims:?} ({numel} elements) but {} bytes of {size}-byte elements",
                real.data.len()
            ),
        ));
    }
    Ok(Some(MatArray {
        name,
        class,
        dims,
        storage: real.ty,
        big_endian: s.big,
        bytes: real.data,
    }))
}
