//! Downloading the official dataset files: checksummed (the published MD5s), with a progress bar,
//! written atomically (`*.part`, verified, then renamed), and safe to re-run: files that are
//! already present and verify are not downloaded again, and CIFAR-10's archive is unpacked
//! again only when its members are missing or differ from the MD5s recorded at extraction
//! (`.relushare-md5` next to them). The archive is kept; if it is deleted, the verified members
//! are still recognised and nothing is downloaded.
//!
//! Without network access the error says which URL failed and where to put the file by hand.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::read::GzDecoder;
use md5::{Digest, Md5};

use crate::error::{DataError, FormatProblem};
use crate::DatasetName;

/// A file to download, relative to the data directory.
#[derive(Debug, Clone)]
pub struct Resource {
    pub url: String,
    /// Lower-case hex MD5 of the file.
    pub md5: String,
    /// Where it goes, relative to the data directory.
    pub file: PathBuf,
    /// What to do with it after it verifies.
    pub unpack: Unpack,
}

/// Post-download step.
#[derive(Debug, Clone)]
pub enum Unpack {
    /// Keep the file as it is.
    None,
    /// A `.tar.gz` whose members `prefix/name` (only those listed, regular files only) are
    /// extracted to `DIR/prefix/name`; `size` (if given) is checked.
    TarGz {
        prefix: String,
        members: Vec<(String, Option<u64>)>,
    },
}

/// What happened to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileAction {
    /// Downloaded and verified now.
    Downloaded,
    /// Already present and verified; nothing downloaded.
    AlreadyPresent,
    /// Extracted from an archive now.
    Unpacked,
    /// Extracted earlier (present with the expected size).
    AlreadyUnpacked,
}

/// One file of a fetch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FetchedFile {
    pub path: PathBuf,
    /// Source URL (for unpacked members: the archive's URL).
    pub url: String,
    pub bytes: u64,
    pub action: FileAction,
}

/// Result of [`fetch`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct FetchReport {
    pub dataset: DatasetName,
    pub data_dir: PathBuf,
    pub files: Vec<FetchedFile>,
    /// Bytes downloaded in this run.
    pub downloaded_bytes: u64,
}

const CIFAR_BATCH_BYTES: u64 = 10_000 * 3073;

/// The official files of a dataset (none for `synthetic`).
pub fn resources(name: DatasetName) -> Vec<Resource> {
    let r = |url: &str, md5: &str, file: &str, unpack: Unpack| Resource {
        url: url.to_string(),
        md5: md5.to_string(),
        file: PathBuf::from(file),
        unpack,
    };
    match name {
        DatasetName::Cifar10 => {
            let mut members: Vec<(String, Option<u64>)> = (1..=5)
                .map(|i| (format!("data_batch_{i}.bin"), Some(CIFAR_BATCH_BYTES)))
                .collect();
            members.push(("test_batch.bin".into(), Some(CIFAR_BATCH_BYTES)));
            members.push(("batches.meta.txt".into(), None));
            vec![r(
                "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                "c32a1d4ab5d03f1284b67883e8d87530",
                "cifar-10-binary.tar.gz",
                Unpack::TarGz {
                    prefix: "cifar-10-batches-bin".into(),
                    members,
                },
            )]
        }
        DatasetName::Fmnist => {
            let base = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";
            [
                (
                    "train-images-idx3-ubyte.gz",
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                ),
                (
                    "train-labels-idx1-ubyte.gz",
                    "25c81989df183df01b3e8a0aad5dffbe",
                ),
                (
                    "t10k-images-idx3-ubyte.gz",
                    "bef4ecab320f06d8554ea6380940ec79",
                ),
                (
                    "t10k-labels-idx1-ubyte.gz",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
            ]
            .iter()
            .map(|(f, m)| {
                r(
                    &format!("{base}{f}"),
                    m,
                    &format!("fashion-mnist/{f}"),
                    Unpack::None,
                )
            })
            .collect()
        }
        DatasetName::Svhn => vec![
            r(
                "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                "e26dedcc434d2e4c54c9b2d4a06d8373",
                "svhn/train_32x32.mat",
                Unpack::None,
            ),
            r(
                "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                "eb5a983be6a315427106f1b164d9cef3",
                "svhn/test_32x32.mat",
                Unpack::None,
            ),
        ],
        DatasetName::Synthetic => Vec::new(),
    }
}

/// Downloads, verifies and unpacks dataset `name` into `data_dir` from the official URLs.
/// `synthetic` needs no files and returns an empty report.
pub fn fetch(name: DatasetName, data_dir: &Path, progress: bool) -> Result<FetchReport, DataError> {
    fetch_from(name, data_dir, None, progress)
}

/// Like [`fetch`], but with `mirror` (a base URL) replacing the directory part of every official
/// URL; the file names and checksums stay the same.
pub fn fetch_from(
    name: DatasetName,
    data_dir: &Path,
    mirror: Option<&str>,
    progress: bool,
) -> Result<FetchReport, DataError> {
    let mut res = resources(name);
    if let Some(m) = mirror {
        for r in &mut res {
            let file = r.url.rsplit('/').next().unwrap_or_default().to_string();
            r.url = format!("{}/{}", m.trim_end_matches('/'), file);
        }
    }
    let files = fetch_resources(&res, data_dir, progress)?;
    let downloaded_bytes = files
        .iter()
        .filter(|f| f.action == FileAction::Downloaded)
        .map(|f| f.bytes)
        .sum();
    Ok(FetchReport {
        dataset: name,
        data_dir: data_dir.to_path_buf(),
        files,
        downloaded_bytes,
    })
}

/// Fetches an explicit list of resources into `data_dir` (what [`fetch`] does for a dataset).
pub fn fetch_resources(
    resources: &[Resource],
    data_dir: &Path,
    progress: bool,
) -> Result<Vec<FetchedFile>, DataError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut out = Vec::new();
    for r in resources {
        let dest = data_dir.join(&r.file);
        // An archive deleted after a verified unpack is not fetched again.
        if let Unpack::TarGz { prefix, members } = &r.unpack {
            if !dest.exists() {
                if let Some(done) = verified_members(data_dir, prefix, members, &r.url)? {
                    out.extend(done);
                    continue;
                }
            }
        }
        let action = if dest.is_file() && md5_file(&dest)? == r.md5 {
            FileAction::AlreadyPresent
        } else {
            download(&agent, r, &dest, progress)?;
            FileAction::Downloaded
        };
        let bytes = fs::metadata(&dest)
            .map_err(|e| DataError::io(&dest, e))?
            .len();
        out.push(FetchedFile {
            path: dest.clone(),
            url: r.url.clone(),
            bytes,
            action,
        });
        if let Unpack::TarGz { prefix, members } = &r.unpack {
            out.extend(unpack_tar_gz(&dest, data_dir, prefix, members, &r.url)?);
        }
    }
    Ok(out)
}

/// MD5 of a file, lower-case hex.
pub fn md5_file(path: &Path) -> Result<String, DataError> {
    let mut f = BufReader::new(File::open(path).map_err(|e| DataError::io(path, e))?);
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_os_string();
    s.push(".part");
    PathBuf::from(s)
}

fn net_error(url: &str, dest: &Path, e: ureq::Error) -> DataError {
    let message = match &e {
        ureq::Error::StatusCode(code) => format!("the server answered HTTP {code}"),
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Timeout(_)
        | ureq::Error::Io(_) => format!(
            "{e} (no network access? download the file by hand to {} and re-run to verify it)",
            dest.display()
        ),
        _ => e.to_string(),
    };
    DataError::Download {
        url: url.to_string(),
        message,
    }
}

fn download(
    agent: &ureq::Agent,
    r: &Resource,
    dest: &Path,
    progress: bool,
) -> Result<(), DataError> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    }
    let mut resp = agent
        .get(&r.url)
        .call()
        .map_err(|e| net_error(&r.url, dest, e))?;
    let total = resp.body().content_length();
    let bar = if progress {
        let b = indicatif::ProgressBar::with_draw_target(
            total,
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
        b.set_message(
            r.file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let part = part_path(dest);
    let result = (|| -> Result<(u64, String), DataError> {
        let mut file = File::create(&part).map_err(|e| DataError::io(&part, e))?;
        let mut reader = resp.body_mut().as_reader();
        let mut h = Md5::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut got: u64 = 0;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(DataError::Download {
                        url: r.url.clone(),
                        message: format!("connection failed after {got} bytes: {e}"),
                    })
                }
            };
            h.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(|e| DataError::io(&part, e))?;
            got += n as u64;
            bar.set_position(got);
        }
        file.sync_all().map_err(|e| DataError::io(&part, e))?;
        if let Some(t) = total {
            if got != t {
                return Err(DataError::Download {
                    url: r.url.clone(),
                    message: format!("received {got} of {t} bytes"),
                });
            }
        }
        Ok((got, hex(&h.finalize())))
    })();
    bar.finish_and_clear();
    let (_, md5) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
    };
    if md5 != r.md5 {
        let _ = fs::remove_file(&part);
        return Err(DataError::Checksum {
            path: dest.to_path_buf(),
            expected: r.md5.clone(),
            actual: format!("{md5} (downloaded from {}; not kept)", r.url),
        });
    }
    fs::rename(&part, dest).map_err(|e| DataError::io(dest, e))
}

fn unpack_tar_gz(
    archive: &Path,
    data_dir: &Path,
    prefix: &str,
    members: &[(String, Option<u64>)],
    url: &str,
) -> Result<Vec<FetchedFile>, DataError> {
    let target = data_dir.join(prefix);
    if let Some(done) = verified_members(data_dir, prefix, members, url)? {
        return Ok(done);
    }
    fs::create_dir_all(&target).map_err(|e| DataError::io(&target, e))?;
    let f = File::open(archive).map_err(|e| DataError::io(archive, e))?;
    let mut tar = tar::Archive::new(GzDecoder::new(BufReader::new(f)));
    let bad = |e: io::Error| {
        DataError::format(
            archive,
            FormatProblem::Corrupt,
            format!("reading the archive: {e}"),
        )
    };
    let mut done = Vec::new();
    let mut sums: Vec<(String, String)> = Vec::new();
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(bad)?.into_owned();
        let mut comps = path.components();
        let (
            Some(std::path::Component::Normal(dir)),
            Some(std::path::Component::Normal(name)),
            None,
        ) = (comps.next(), comps.next(), comps.next())
        else {
            continue;
        };
        if dir != std::ffi::OsStr::new(prefix) {
            continue;
        }
        let name = name.to_string_lossy().into_owned();
        let Some((_, size)) = members.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let dest = target.join(&name);
        let part = part_path(&dest);
        let out = File::create(&part).map_err(|e| DataError::io(&part, e))?;
        let mut out = HashingWriter {
            inner: out,
            md5: Md5::new(),
        };
        let n = io::copy(&mut entry, &mut out).map_err(|e| {
            let _ = fs::remove_file(&part);
            bad(e)
        })?;
        let HashingWriter { inner: out, md5 } = out;
        sums.push((name.clone(), hex(&md5.finalize())));
        out.sync_all().map_err(|e| DataError::io(&part, e))?;
        drop(out);
        if let Some(s) = size {
            if n != *s {
                let _ = fs::remove_file(&part);
                return Err(DataError::format(
                    archive,
                    FormatProblem::CountMismatch,
                    format!("member {prefix}/{name} has {n} bytes, expected {s}"),
                ));
            }
        }
        fs::rename(&part, &dest).map_err(|e| DataError::io(&dest, e))?;
        done.push(FetchedFile {
            path: dest,
            url: url.to_string(),
            bytes: n,
            action: FileAction::Unpacked,
        });
    }
    for (n, _) in members {
        if !done.iter().any(|f| f.path == target.join(n)) {
            return Err(DataError::format(
                archive,
                FormatProblem::CountMismatch,
                format!("the archive has no member {prefix}/{n}"),
            ));
        }
    }
    // Record the members' checksums, so that a later run can verify them without the archive.
    let mut text = String::new();
    for (n, _) in members {
        if let Some((_, m)) = sums.iter().rev().find(|(name, _)| name == n) {
            text.push_str(&format!("{m}  {n}\n"));
        }
    }
    let marker = target.join(MARKER);
    let part = part_path(&marker);
    fs::write(&part, text).map_err(|e| DataError::io(&part, e))?;
    fs::rename(&part, &marker).map_err(|e| DataError::io(&marker, e))?;
    Ok(done)
}

/// File (in an unpacked archive's directory) listing the MD5 of each member extracted.
pub const MARKER: &str = ".relushare-md5";

struct HashingWriter<W: Write> {
    inner: W,
    md5: Md5,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.md5.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The members of an earlier verified unpack, if every one is present with the MD5 recorded in
/// the marker file at extraction time (and the expected size).
fn verified_members(
    data_dir: &Path,
    prefix: &str,
    members: &[(String, Option<u64>)],
    url: &str,
) -> Result<Option<Vec<FetchedFile>>, DataError> {
    let target = data_dir.join(prefix);
    let Ok(text) = fs::read_to_string(target.join(MARKER)) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (n, size) in members {
        let Some(sum) = text.lines().find_map(|l| {
            l.strip_suffix(n.as_str())
                .and_then(|h| h.strip_suffix("  "))
        }) else {
            return Ok(None);
        };
        let p = target.join(n);
        let Ok(meta) = fs::metadata(&p) else {
            return Ok(None);
        };
        if size.is_some_and(|s| s != meta.len()) || md5_file(&p)? != sum {
            return Ok(None);
        }
        out.push(FetchedFile {
            path: p,
            url: url.to_string(),
            bytes: meta.len(),
            action: FileAction::AlreadyUnpacked,
        });
    }
    Ok(Some(out))
}
