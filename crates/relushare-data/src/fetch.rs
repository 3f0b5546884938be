//! Downloading the official dataset files: checksummed (the published MD5s), with a progress bar,
//! written atomically (`*.part`, verified, then renamed), and safe to re-run: files that are
//! already present and verify are not downloaded again, and CIFAR-10's archive is unpacked
//! again only when its members are missing or differ from the MD5s recorded at extraction
//! (`.relushare-md5` next to them). The archive is kept; if it is deleted, the verified members
//! are still recognised and nothing is downloaded.
//!
//! Without network access the error says which URL failed and where to put the file by hand.
//!
//! **Offline copies.** Fashion-MNIST's files also carry the SHA-256 of their *decompressed*
//! bytes. A copy whose gzip header was rewritten (Debian's `dataset-fashion-mnist` package drops
//! the stored name and sets a new timestamp, so the `.gz` MD5 differs) is accepted when its
//! content matches, and a corrupt one is refused by name. [`fetch_local`] takes the files from
//! a folder (`relushare data fetch --from DIR`), and [`fetch_or_local`] falls back to a known
//! local copy ([`local_copies`]: the Debian package's folder) when the download fails.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::read::GzDecoder;
use md5::{Digest, Md5};
use sha2::Sha256;

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
    /// For a `.gz` file: SHA-256 (lower-case hex) and size of its decompressed bytes. A file
    /// whose content matches is accepted even when its own MD5 differs (a repacked gzip header).
    pub content: Option<(String, u64)>,
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
    /// Copied from a local folder (`--from`, or a known local copy after a failed download).
    Copied,
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
    /// How the files were obtained when not from the official URLs (e.g. a failed download
    /// answered by a local copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

const CIFAR_BATCH_BYTES: u64 = 10_000 * 3073;

/// The official files of a dataset (none for `synthetic`).
pub fn resources(name: DatasetName) -> Vec<Resource> {
    let r = |url: &str, md5: &str, file: &str, unpack: Unpack| Resource {
        url: url.to_string(),
        md5: md5.to_string(),
        file: PathBuf::from(file),
        unpack,
        content: None,
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
            // (file, MD5 of the .gz, SHA-256 and size of the decompressed bytes)
            [
                (
                    "train-images-idx3-ubyte.gz",
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                    47_040_016,
                ),
                (
                    "train-labels-idx1-ubyte.gz",
                    "25c81989df183df01b3e8a0aad5dffbe",
                    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                    60_008,
                ),
                (
                    "t10k-images-idx3-ubyte.gz",
                    "bef4ecab320f06d8554ea6380940ec79",
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                    7_840_016,
                ),
                (
                    "t10k-labels-idx1-ubyte.gz",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                    10_008,
                ),
            ]
            .iter()
            .map(|(f, m, sha, n)| Resource {
                content: Some((sha.to_string(), *n)),
                ..r(
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
        note: None,
    })
}

/// Folders known to hold an offline copy of a dataset's files, if present on this machine:
/// for Fashion-MNIST the folder of Debian's `dataset-fashion-mnist` package.
pub fn local_copies(name: DatasetName) -> Vec<PathBuf> {
    match name {
        DatasetName::Fmnist => vec![PathBuf::from("/usr/share/datasets/fashion-mnist")],
        _ => Vec::new(),
    }
}

/// [`fetch_from`]; when the download fails and one of `fallbacks` holds the dataset's files,
/// they are taken from there instead ([`fetch_local`]) and the report's `note` says so.
pub fn fetch_or_local(
    name: DatasetName,
    data_dir: &Path,
    mirror: Option<&str>,
    fallbacks: &[PathBuf],
    progress: bool,
) -> Result<FetchReport, DataError> {
    match fetch_from(name, data_dir, mirror, progress) {
        Ok(r) => Ok(r),
        Err(e @ DataError::Download { .. }) => {
            let Some(src) = fallbacks.iter().find(|d| d.is_dir()) else {
                return Err(e);
            };
            let mut report = fetch_local(name, data_dir, src)?;
            report.note = Some(format!(
                "download failed ({e}); took the files from the local copy in {}",
                src.display()
            ));
            Ok(report)
        }
        Err(e) => Err(e),
    }
}

/// Copies dataset `name`'s files from the folder `src` into `data_dir`, verifying each (by its
/// decompressed SHA-256 where the dataset has one, else its MD5). A file may be in `src`
/// compressed (`x.gz`) or not (`x`). Files already in `data_dir` that verify are kept.
pub fn fetch_local(
    name: DatasetName,
    data_dir: &Path,
    src: &Path,
) -> Result<FetchReport, DataError> {
    if !src.is_dir() {
        return Err(DataError::io(
            src,
            io::Error::new(io::ErrorKind::NotFound, "no such folder"),
        ));
    }
    let mut files = Vec::new();
    for r in resources(name) {
        if !matches!(r.unpack, Unpack::None) {
            return Err(DataError::Download {
                url: src.display().to_string(),
                message: format!(
                    "{name}'s files come as one archive ({}); unpack it into {} by hand",
                    r.file.display(),
                    data_dir.display()
                ),
            });
        }
        let dest = data_dir.join(&r.file);
        if dest.is_file() && verify_file(&r, &dest)?.is_ok() {
            files.push(FetchedFile {
                bytes: fs::metadata(&dest)
                    .map_err(|e| DataError::io(&dest, e))?
                    .len(),
                path: dest,
                url: r.url.clone(),
                action: FileAction::AlreadyPresent,
            });
            continue;
        }
        let base = r.file.file_name().expect("a file name").to_os_string();
        let plain = Path::new(&base).with_extension("");
        let candidates = [src.join(&base), src.join(&plain)];
        let Some(found) = candidates.iter().find(|p| p.is_file()) else {
            return Err(DataError::io(
                &candidates[0],
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{} has no {} (nor {})",
                        src.display(),
                        base.to_string_lossy(),
                        plain.display()
                    ),
                ),
            ));
        };
        let compressed = found.extension().is_some_and(|e| e == "gz");
        let check = match (&r.content, compressed) {
            (Some((sha, n)), false) => {
                let (got, len) = sha256_of(found, false)?;
                if got == *sha && len == *n {
                    Ok(())
                } else {
                    Err(format!("{got} ({len} bytes)"))
                }
            }
            _ => verify_file(&r, found)?,
        };
        if let Err(actual) = check {
            return Err(DataError::Checksum {
                path: found.clone(),
                expected: expected_text(&r),
                actual: format!("{actual}; not copied"),
            });
        }
        let dest = data_dir.join(r.file.with_file_name(found.file_name().expect("a file")));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
        }
        let part = part_path(&dest);
        fs::copy(found, &part).map_err(|e| DataError::io(&part, e))?;
        fs::rename(&part, &dest).map_err(|e| DataError::io(&dest, e))?;
        files.push(FetchedFile {
            bytes: fs::metadata(&dest)
                .map_err(|e| DataError::io(&dest, e))?
                .len(),
            path: dest,
            url: found.display().to_string(),
            action: FileAction::Copied,
        });
    }
    Ok(FetchReport {
        dataset: name,
        data_dir: data_dir.to_path_buf(),
        files,
        downloaded_bytes: 0,
        note: Some(format!("copied from {}", src.display())),
    })
}

fn expected_text(r: &Resource) -> String {
    match &r.content {
        Some((sha, n)) => format!("decompressed SHA-256 {sha} ({n} bytes)"),
        None => format!("MD5 {}", r.md5),
    }
}

/// Whether `path` is resource `r`'s file: its decompressed SHA-256 and size where `r` has
/// them (whatever its gzip header), else its MD5. `Err` carries what was found instead.
fn verify_file(r: &Resource, path: &Path) -> Result<Result<(), String>, DataError> {
    match &r.content {
        Some((sha, n)) => {
            let (got, len) = sha256_of(path, true)?;
            Ok(if got == *sha && len == *n {
                Ok(())
            } else {
                Err(format!("decompressed SHA-256 {got} ({len} bytes)"))
            })
        }
        None => {
            let got = md5_file(path)?;
            Ok(if got == r.md5 {
                Ok(())
            } else {
                Err(format!("MD5 {got}"))
            })
        }
    }
}

/// SHA-256 (hex) and length of a file's bytes, gunzipped first when `gunzip`; a corrupt gzip
/// stream is a format error naming the file.
pub fn sha256_of(path: &Path, gunzip: bool) -> Result<(String, u64), DataError> {
    let f = BufReader::new(File::open(path).map_err(|e| DataError::io(path, e))?);
    let mut reader: Box<dyn Read> = if gunzip {
        Box::new(GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(DataError::format(
                    path,
                    FormatProblem::Corrupt,
                    format!("decompressing: {e}"),
                ))
            }
        };
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex(&h.finalize()), len))
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
        let action = if dest.is_file() && verify_file(r, &dest)?.is_ok() {
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
    if md5 != r.md5 && verify_file(r, &part)?.is_err() {
        let _ = fs::remove_file(&part);
        return Err(DataError::Checksum {
            path: dest.to_path_buf(),
            expected: expected_text(r),
            actual: format!("MD5 {md5} (downloaded from {}; not kept)", r.url),
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
