//! `fetch` against a local HTTP server: download, verify, unpack, re-run, and every failure.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use md5::{Digest, Md5};
use relushare_data::fetch::{fetch_resources, Resource, Unpack};
use relushare_data::{fetch, fetch_from, DataError, DatasetName, FileAction};

/// What the server sends for a path.
#[derive(Clone)]
enum Reply {
    Ok(Vec<u8>),
    /// Announces `len` bytes but sends only the body, then closes.
    Short(Vec<u8>, usize),
}

/// Serves `files` over plain HTTP on 127.0.0.1; returns the base URL and a request counter.
fn serve(files: HashMap<String, Reply>) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            h.fetch_add(1, Ordering::SeqCst);
            let line = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let path = line
                .split(' ')
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            let _ = match files.get(&path) {
                Some(Reply::Ok(body)) => s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| s.write_all(body)),
                Some(Reply::Short(body, len)) => s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| s.write_all(body)),
                None => s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    (base, hits)
}

fn md5(b: &[u8]) -> String {
    Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn res(url: String, body: &[u8], file: &str) -> Resource {
    Resource {
        url,
        md5: md5(body),
        file: PathBuf::from(file),
        unpack: Unpack::None,
        content: None,
    }
}

#[test]
fn download_verify_and_rerun() {
    let a = b"first file contents".to_vec();
    let b = vec![7u8; 300_000];
    let (base, hits) = serve(HashMap::from([
        ("a.gz".to_string(), Reply::Ok(a.clone())),
        ("b.gz".to_string(), Reply::Ok(b.clone())),
    ]));
    let dir = tempfile::tempdir().unwrap();
    let rs = vec![
        res(format!("{base}/a.gz"), &a, "sub/a.gz"),
        res(format!("{base}/b.gz"), &b, "sub/b.gz"),
    ];
    let got = fetch_resources(&rs, dir.path(), false).unwrap();
    assert!(got.iter().all(|f| f.action == FileAction::Downloaded));
    assert_eq!(std::fs::read(dir.path().join("sub/a.gz")).unwrap(), a);
    assert_eq!(std::fs::read(dir.path().join("sub/b.gz")).unwrap(), b);
    assert_eq!(got[1].bytes, 300_000);
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // Re-run: nothing downloaded.
    let got = fetch_resources(&rs, dir.path(), false).unwrap();
    assert!(got.iter().all(|f| f.action == FileAction::AlreadyPresent));
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // A damaged local file is replaced.
    std::fs::write(dir.path().join("sub/b.gz"), b"damaged").unwrap();
    let got = fetch_resources(&rs, dir.path(), true).unwrap();
    assert_eq!(got[0].action, FileAction::AlreadyPresent);
    assert_eq!(got[1].action, FileAction::Downloaded);
    assert_eq!(std::fs::read(dir.path().join("sub/b.gz")).unwrap(), b);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[test]
fn failures_are_clear_and_leave_nothing() {
    let good = b"the real thing".to_vec();
    let (base, _) = serve(HashMap::from([
        ("x.bin".to_string(), Reply::Ok(b"tampered".to_vec())),
        ("short.bin".to_string(), Reply::Short(vec![1; 100], 1000)),
    ]));
    let dir = tempfile::tempdir().unwrap();

    // Checksum mismatch.
    let e = fetch_resources(
        &[res(format!("{base}/x.bin"), &good, "x.bin")],
        dir.path(),
        false,
    )
    .unwrap_err();
    assert!(matches!(e, DataError::Checksum { .. }), "{e}");
    assert!(
        e.to_string().contains("x.bin") && e.to_string().contains(&md5(&good)),
        "{e}"
    );
    // Short body.
    let e = fetch_resources(
        &[res(format!("{base}/short.bin"), &good, "short.bin")],
        dir.path(),
        false,
    )
    .unwrap_err();
    assert!(matches!(e, DataError::Download { .. }), "{e}");
    assert!(e.to_string().contains("short.bin"), "{e}");
    // 404.
    let e = fetch_resources(
        &[res(format!("{base}/missing.bin"), &good, "m.bin")],
        dir.path(),
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
    // Nothing half-written.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Offline: nobody listens on the port.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = fetch_resources(
        &[res(
            format!("http://127.0.0.1:{port}/f.bin"),
            &good,
            "f.bin",
        )],
        dir.path(),
        false,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("no network access") && msg.contains("f.bin"),
        "{msg}"
    );

    // The official list through a mirror that lacks the files: the error names the mirror URL.
    let e = fetch_from(
        DatasetName::Fmnist,
        dir.path(),
        Some(&format!("{base}/mirror/")),
        false,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("{base}/mirror/train-images-idx3-ubyte.gz")),
        "{e}"
    );
    // Synthetic needs nothing.
    let r = fetch(DatasetName::Synthetic, dir.path(), false).unwrap();
    assert!(r.files.is_empty());
}

fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        let raw = name.as_bytes();
        h.as_gnu_mut().unwrap().name[..raw.len()].copy_from_slice(raw);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&tar).unwrap();
    e.finish().unwrap()
}

#[test]
fn archive_unpack_is_safe_and_idempotent() {
    let archive = tar_gz(&[
        ("batches/a.bin", &[1u8; 10]),
        ("../evil.bin", b"outside"),
        ("batches/../../evil2.bin", b"outside"),
        ("other/a.bin", b"wrong dir"),
        ("batches/b.bin", &[2u8; 20]),
        ("batches/unlisted.bin", b"not wanted"),
    ]);
    let (base, hits) = serve(HashMap::from([(
        "arch.tar.gz".to_string(),
        Reply::Ok(archive.clone()),
    )]));
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("data");
    let members = vec![("a.bin".to_string(), Some(10)), ("b.bin".to_string(), None)];
    let r = Resource {
        url: format!("{base}/arch.tar.gz"),
        md5: md5(&archive),
        file: PathBuf::from("arch.tar.gz"),
        unpack: Unpack::TarGz {
            prefix: "batches".into(),
            members: members.clone(),
        },
        content: None,
    };
    let got = fetch_resources(std::slice::from_ref(&r), &dir, false).unwrap();
    let actions: Vec<_> = got.iter().map(|f| f.action).collect();
    assert_eq!(
        actions,
        [
            FileAction::Downloaded,
            FileAction::Unpacked,
            FileAction::Unpacked
        ]
    );
    assert_eq!(std::fs::read(dir.join("batches/a.bin")).unwrap(), [1u8; 10]);
    assert_eq!(std::fs::read(dir.join("batches/b.bin")).unwrap(), [2u8; 20]);
    assert!(!dir.join("batches/unlisted.bin").exists());
    assert!(!work.path().join("evil.bin").exists() && !dir.join("evil.bin").exists());
    assert!(!work.path().join("evil2.bin").exists());
    assert!(!dir.join("other").exists());

    // Re-run: nothing downloaded or unpacked.
    let got = fetch_resources(std::slice::from_ref(&r), &dir, false).unwrap();
    let actions: Vec<_> = got.iter().map(|f| f.action).collect();
    assert_eq!(
        actions,
        [
            FileAction::AlreadyPresent,
            FileAction::AlreadyUnpacked,
            FileAction::AlreadyUnpacked
        ]
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // A damaged member (wrong size) is unpacked again from the kept archive.
    std::fs::write(dir.join("batches/a.bin"), [0u8; 3]).unwrap();
    let got = fetch_resources(std::slice::from_ref(&r), &dir, false).unwrap();
    assert_eq!(got[1].action, FileAction::Unpacked);
    assert_eq!(std::fs::read(dir.join("batches/a.bin")).unwrap(), [1u8; 10]);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Archive deleted after a verified unpack: recognised by the recorded MD5s, no download.
    std::fs::remove_file(dir.join("arch.tar.gz")).unwrap();
    let got = fetch_resources(std::slice::from_ref(&r), &dir, false).unwrap();
    let actions: Vec<_> = got.iter().map(|f| f.action).collect();
    assert_eq!(
        actions,
        [FileAction::AlreadyUnpacked, FileAction::AlreadyUnpacked]
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // ... unless a member changed (same size, other bytes): then it is fetched again.
    std::fs::write(dir.join("batches/b.bin"), [9u8; 20]).unwrap();
    let got = fetch_resources(std::slice::from_ref(&r), &dir, false).unwrap();
    assert_eq!(got[0].action, FileAction::Downloaded);
    assert_eq!(std::fs::read(dir.join("batches/b.bin")).unwrap(), [2u8; 20]);
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // Member with the wrong size, or missing, in the archive: a clear error.
    let wrong = Resource {
        unpack: Unpack::TarGz {
            prefix: "batches".into(),
            members: vec![("a.bin".to_string(), Some(11))],
        },
        ..r.clone()
    };
    let e = fetch_resources(&[wrong], &work.path().join("d2"), false).unwrap_err();
    assert!(
        e.to_string().contains("batches/a.bin") && e.to_string().contains("11"),
        "{e}"
    );
    let missing = Resource {
        unpack: Unpack::TarGz {
            prefix: "batches".into(),
            members: vec![("zzz.bin".to_string(), None)],
        },
        ..r
    };
    let e = fetch_resources(&[missing], &work.path().join("d3"), false).unwrap_err();
    assert!(e.to_string().contains("no member batches/zzz.bin"), "{e}");
}

fn gz(bytes: &[u8], name_in_header: Option<&str>) -> Vec<u8> {
    let mut b = flate2::GzBuilder::new();
    if let Some(n) = name_in_header {
        b = b.filename(n);
    }
    let mut e = b.write(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn sha256(b: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn repacked_gzip_is_accepted_by_its_decompressed_content() {
    let body = b"the official decompressed bytes".to_vec();
    let official = gz(&body, Some("x.bin"));
    let repacked = gz(&body, None);
    assert_ne!(md5(&official), md5(&repacked), "the headers differ");
    let (base, _) = serve(HashMap::from([(
        "x.bin.gz".to_string(),
        Reply::Ok(repacked.clone()),
    )]));
    let dir = tempfile::tempdir().unwrap();
    let mut r = res(format!("{base}/x.bin.gz"), &official, "x.bin.gz");
    // by MD5 alone the repacked file is refused ...
    assert!(matches!(
        fetch_resources(std::slice::from_ref(&r), dir.path(), false),
        Err(DataError::Checksum { .. })
    ));
    // ... by the content's SHA-256 it is the same data
    r.content = Some((sha256(&body), body.len() as u64));
    let got = fetch_resources(std::slice::from_ref(&r), dir.path(), false).unwrap();
    assert_eq!(got[0].action, FileAction::Downloaded);
    let got = fetch_resources(std::slice::from_ref(&r), dir.path(), false).unwrap();
    assert_eq!(got[0].action, FileAction::AlreadyPresent);
    // other content under the same name is refused, naming the file
    std::fs::write(dir.path().join("x.bin.gz"), gz(b"other bytes", None)).unwrap();
    let (base2, _) = serve(HashMap::from([(
        "x.bin.gz".to_string(),
        Reply::Ok(gz(b"other bytes", None)),
    )]));
    r.url = format!("{base2}/x.bin.gz");
    let e = fetch_resources(std::slice::from_ref(&r), dir.path(), false).unwrap_err();
    assert!(matches!(e, DataError::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("x.bin.gz"), "{e}");
}

/// Fashion-MNIST's files by name in a folder, with arbitrary (wrong) contents.
fn fake_fmnist(dir: &std::path::Path, corrupt: &str) {
    for f in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        let bytes = if f == corrupt {
            b"not a gzip stream at all".to_vec()
        } else {
            gz(b"wrong contents", None)
        };
        std::fs::write(dir.join(f), bytes).unwrap();
    }
}

#[test]
fn local_copy_refuses_wrong_and_corrupt_files_by_name() {
    let src = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    fake_fmnist(src.path(), "");
    let e = relushare_data::fetch_local(DatasetName::Fmnist, data.path(), src.path()).unwrap_err();
    assert!(matches!(e, DataError::Checksum { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("train-images-idx3-ubyte.gz"), "{msg}");
    assert!(
        msg.contains("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "{msg}"
    );
    fake_fmnist(src.path(), "train-images-idx3-ubyte.gz");
    let e = relushare_data::fetch_local(DatasetName::Fmnist, data.path(), src.path()).unwrap_err();
    assert!(matches!(e, DataError::Format { .. }), "{e}");
    assert!(e.to_string().contains("train-images-idx3-ubyte.gz"), "{e}");
    // nothing half-copied is left behind
    assert!(!data
        .path()
        .join("fashion-mnist/train-images-idx3-ubyte.gz")
        .exists());
    let e = relushare_data::fetch_local(DatasetName::Fmnist, data.path(), &src.path().join("nope"))
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

/// The Debian package's copy (installed by CI where apt exists): repacked headers, official
/// decompressed bytes.
#[test]
fn debian_copy_verifies_and_a_failed_download_falls_back_to_it() {
    let debian = relushare_data::local_copies(DatasetName::Fmnist).remove(0);
    if !debian.is_dir() {
        println!(
            "note: {} is absent (apt-get install dataset-fashion-mnist); skipped",
            debian.display()
        );
        return;
    }
    let data = tempfile::tempdir().unwrap();
    // an address where nothing listens: the download fails at once
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let mirror = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let e =
        relushare_data::fetch_or_local(DatasetName::Fmnist, data.path(), Some(&mirror), &[], false)
            .unwrap_err();
    assert!(matches!(e, DataError::Download { .. }), "{e}");
    let r = relushare_data::fetch_or_local(
        DatasetName::Fmnist,
        data.path(),
        Some(&mirror),
        std::slice::from_ref(&debian),
        false,
    )
    .unwrap();
    assert!(
        r.note.as_deref().unwrap().contains("download failed"),
        "{:?}",
        r.note
    );
    assert_eq!(r.files.len(), 4);
    assert!(r.files.iter().all(|f| f.action == FileAction::Copied));
    let again = relushare_data::fetch_local(DatasetName::Fmnist, data.path(), &debian).unwrap();
    assert!(again
        .files
        .iter()
        .all(|f| f.action == FileAction::AlreadyPresent));
    let train = relushare_data::load(
        DatasetName::Fmnist,
        relushare_data::Split::Train,
        Some(data.path()),
        None,
        (1, 28, 28),
    )
    .unwrap();
    assert_eq!(train.set.len(), 60_000);
}
