//! Session keys: a fresh CA per session and one certificate per party role.
//!
//! Layout of a keys directory (written by [`generate`]):
//! - `ca.crt`: the session CA certificate (PEM). The CA private key is never written: once the
//!   role certificates are issued nobody can mint more for this session.
//! - `party-R.crt` / `party-R.key` for R = 0, 1, 2: the role's certificate (PEM, SAN DNS name
//!   `relushare-party-R`, usable for TLS server and client authentication) and its PKCS#8 key.
//! - `session-id`: the session identifier, checked by both sides right after every handshake.
//!
//! Key files are created with owner-only permissions (0600) through a temporary file that is
//! renamed into place, and [`PartyKeys::load`] refuses key files readable by group or others.

use super::NetError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Number of computing parties.
pub const PARTIES: usize = 3;
/// Maximum length of a session id.
pub const MAX_SESSION_ID: usize = 64;

/// The DNS name that certifies `role` (e.g. `relushare-party-1`).
pub fn role_name(role: usize) -> String {
    format!("relushare-party-{role}")
}

/// Checks that a session id is 1..=64 characters of `[A-Za-z0-9._-]`.
pub fn validate_session_id(id: &str) -> Result<(), NetError> {
    if id.is_empty() || id.len() > MAX_SESSION_ID {
        return Err(NetError::Config(format!(
            "session id must have 1 to {MAX_SESSION_ID} characters (got {})",
            id.len()
        )));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(NetError::Config(format!(
            "session id {id:?} may only contain letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// A random 128-bit session id (hex) from the operating system's generator.
pub fn random_session_id() -> Result<String, NetError> {
    use rustls::crypto::ring::default_provider;
    let mut b = [0u8; 16];
    default_provider()
        .secure_random
        .fill(&mut b)
        .map_err(|_| NetError::Config("the operating system random generator failed".into()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Files written by [`generate`].
#[derive(Debug, Clone)]
pub struct GeneratedKeys {
    pub dir: PathBuf,
    pub session_id: String,
    pub files: Vec<PathBuf>,
}

#[cfg(test)]
fn cert_path(dir: &Path, role: usize) -> PathBuf {
    dir.join(format!("party-{role}.crt"))
}
#[cfg(test)]
fn key_path(dir: &Path, role: usize) -> PathBuf {
    dir.join(format!("party-{role}.key"))
}

fn keys_err(path: &Path, reason: impl ToString) -> NetError {
    NetError::Keys {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, fsync, rename),
/// with the given Unix permission bits on the new file.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), NetError> {
    let tmp = path.with_extension(match path.extension() {
        Some(e) => format!("{}.tmp", e.to_string_lossy()),
        None => "tmp".to_string(),
    });
    let result = (|| -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            if let Ok(d) = fs::File::open(if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            }) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(keys_err(path, format!("cannot write: {e}")));
    }
    Ok(())
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Sets a validity window from yesterday to `days` days ahead (tolerates small clock skew).
fn set_validity(params: &mut rcgen::CertificateParams, days: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64 / 86_400)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(now - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(now + days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// Certificate validity of a session (days).
pub const VALIDITY_DAYS: i64 = 365;

/// Creates a fresh session CA and certificates/keys for the three roles in `dir`.
///
/// Refuses to overwrite an existing keys directory unless `force` is set (mixing files of two
/// sessions would break authentication in confusing ways).
pub fn generate(
    dir: &Path,
    session_id: Option<&str>,
    force: bool,
) -> Result<GeneratedKeys, NetError> {
    let entries: Vec<KeyEntry> = (0..PARTIES)
        .map(|role| KeyEntry {
            role,
            stem: format!("party-{role}"),
            client: None,
        })
        .collect();
    generate_entries(dir, session_id, force, &entries)
}

/// The file stem of a deployment's model owner (role 1) credentials.
pub const OWNER_STEM: &str = "owner";
/// The file stem of a deployment's helper (role 2) credentials.
pub const HELPER_STEM: &str = "helper";
/// Most client certificates one `generate_deployment` call writes.
pub const MAX_CLIENTS: usize = 10_000;

/// The DNS name (second SAN) that certifies a client's identity, e.g. `client-1.client.relushare`.
pub fn client_dns_name(name: &str) -> String {
    format!("{name}.client.relushare")
}

/// Checks a client name: 1 to 40 characters of `[a-z0-9-]`, starting with a letter or digit.
pub fn validate_client_name(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0] != b'-';
    if ok {
        Ok(())
    } else {
        Err(NetError::Config(format!(
            "client name {name:?} must be 1 to 40 characters of a-z, 0-9 and '-' (not starting with '-')"
        )))
    }
}

/// Keys for a serving deployment: one CA, the model owner (`owner.crt/.key`, role 1), the helper
/// (`helper.crt/.key`, role 2) and `clients` clients `client-1` ... `client-N`
/// (`client-i.crt/.key`, role 0, with the second SAN [`client_dns_name`] naming the client).
/// The `session-id` file holds the deployment id that every connection's hello must carry.
pub fn generate_deployment(
    dir: &Path,
    clients: usize,
    deployment_id: Option<&str>,
    force: bool,
) -> Result<GeneratedKeys, NetError> {
    if clients == 0 || clients > MAX_CLIENTS {
        return Err(NetError::Config(format!(
            "--clients must be between 1 and {MAX_CLIENTS} (got {clients})"
        )));
    }
    let mut entries = vec![
        KeyEntry {
            role: 1,
            stem: OWNER_STEM.into(),
            client: None,
        },
        KeyEntry {
            role: 2,
            stem: HELPER_STEM.into(),
            client: None,
        },
    ];
    for i in 1..=clients {
        let name = format!("client-{i}");
        entries.push(KeyEntry {
            role: 0,
            stem: name.clone(),
            client: Some(name),
        });
    }
    generate_entries(dir, deployment_id, force, &entries)
}

/// One certificate to issue: its role, file stem and (clients) the client name.
struct KeyEntry {
    role: usize,
    stem: String,
    client: Option<String>,
}

fn generate_entries(
    dir: &Path,
    session_id: Option<&str>,
    force: bool,
    entries: &[KeyEntry],
) -> Result<GeneratedKeys, NetError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let session_id = match session_id {
        Some(s) => s.to_string(),
        None => random_session_id()?,
    };
    validate_session_id(&session_id)?;
    let ca_path = dir.join("ca.crt");
    if ca_path.exists() {
        if !force {
            return Err(keys_err(
                dir,
                "already holds session keys (ca.crt exists); pass --force to replace them",
            ));
        }
        // ca.crt marks a complete directory: remove it first so an interrupted replacement
        // never looks complete with a mix of old and new files.
        fs::remove_file(&ca_path).map_err(|e| keys_err(&ca_path, format!("cannot remove: {e}")))?;
    }
    if !dir.exists() {
        let mut b = fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir)
            .map_err(|e| keys_err(dir, format!("cannot create directory: {e}")))?;
    }
    let rc = |e: rcgen::Error| keys_err(dir, format!("certificate generation failed: {e}"));

    let ca_key = KeyPair::generate().map_err(rc)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("relushare session CA {session_id}"),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut ca_params, VALIDITY_DAYS);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(rc)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut files = Vec::new();
    for e in entries {
        let role = e.role;
        let key = KeyPair::generate().map_err(rc)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        p.subject_alt_names = vec![SanType::DnsName(role_name(role).try_into().map_err(rc)?)];
        if let Some(name) = &e.client {
            validate_client_name(name)?;
            p.subject_alt_names.push(SanType::DnsName(
                client_dns_name(name).try_into().map_err(rc)?,
            ));
        }
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(
            DnType::CommonName,
            e.client.clone().unwrap_or_else(|| role_name(role)),
        );
        p.distinguished_name.push(
            DnType::OrganizationalUnitName,
            format!("session {session_id}"),
        );
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        set_validity(&mut p, VALIDITY_DAYS);
        let cert = p.signed_by(&key, &issuer).map_err(rc)?;
        let kp = dir.join(format!("{}.key", e.stem));
        write_atomic_mode(&kp, key.serialize_pem().as_bytes(), 0o600)?;
        let cp = dir.join(format!("{}.crt", e.stem));
        write_atomic_mode(&cp, cert.pem().as_bytes(), 0o644)?;
        files.push(cp);
        files.push(kp);
    }
    let sp = dir.join("session-id");
    write_atomic_mode(&sp, format!("{session_id}\n").as_bytes(), 0o644)?;
    files.push(sp);
    // The CA certificate goes last: its presence marks a complete keys directory.
    let cap = dir.join("ca.crt");
    write_atomic_mode(&cap, ca_cert.pem().as_bytes(), 0o644)?;
    files.push(cap);
    Ok(GeneratedKeys {
        dir: dir.to_path_buf(),
        session_id,
        files,
    })
}

/// The credentials one party needs: the session CA, its own certificate and key, the session id.
#[derive(Debug)]
pub struct PartyKeys {
    pub role: usize,
    pub ca: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub session_id: String,
}

impl Clone for PartyKeys {
    fn clone(&self) -> Self {
        PartyKeys {
            role: self.role,
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            session_id: self.session_id.clone(),
        }
    }
}

fn read_small(path: &Path) -> Result<Vec<u8>, NetError> {
    let meta = fs::metadata(path).map_err(|e| keys_err(path, format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(keys_err(path, "not a regular file"));
    }
    if meta.len() > 1 << 20 {
        return Err(keys_err(
            path,
            format!(
                "too large for a key/certificate file ({} bytes)",
                meta.len()
            ),
        ));
    }
    fs::read(path).map_err(|e| keys_err(path, format!("cannot read: {e}")))
}

fn load_cert(path: &Path) -> Result<CertificateDer<'static>, NetError> {
    let bytes = read_small(path)?;
    let cert = CertificateDer::from_pem_slice(&bytes)
        .map_err(|e| keys_err(path, format!("not a PEM certificate: {e}")))?;
    webpki::EndEntityCert::try_from(&cert)
        .map_err(|e| keys_err(path, format!("malformed certificate: {e}")))?;
    Ok(cert)
}

impl PartyKeys {
    /// Loads the credentials of `role` from a keys directory written by [`generate`].
    pub fn load(dir: &Path, role: usize) -> Result<PartyKeys, NetError> {
        Self::load_stem(dir, role, &format!("party-{role}"))
    }

    /// Loads the credentials `STEM.crt`/`STEM.key` of `role` (e.g. a deployment's `owner`,
    /// `helper` or `client-3`, see [`generate_deployment`]).
    pub fn load_stem(dir: &Path, role: usize, stem: &str) -> Result<PartyKeys, NetError> {
        if role >= PARTIES {
            return Err(NetError::Config(format!(
                "role must be 0, 1 or 2 (got {role})"
            )));
        }
        if stem.is_empty() || stem.contains(['/', '\\']) || stem.starts_with('.') {
            return Err(NetError::Config(format!("bad key name {stem:?}")));
        }
        let ca = load_cert(&dir.join("ca.crt"))?;
        let cp = dir.join(format!("{stem}.crt"));
        if !cp.exists() {
            return Err(keys_err(&cp, "not found (wrong --keys directory or name?)"));
        }
        let cert = load_cert(&cp)?;
        let kp = dir.join(format!("{stem}.key"));
        let meta = fs::metadata(&kp).map_err(|e| keys_err(&kp, format!("cannot read: {e}")))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(keys_err(
                    &kp,
                    format!("private key is accessible by group or others (mode {mode:o}); run `chmod 600` on it"),
                ));
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let key_bytes = read_small(&kp)?;
        let key = PrivateKeyDer::from_pem_slice(&key_bytes)
            .map_err(|e| keys_err(&kp, format!("not a PEM private key: {e}")))?;
        let sp = dir.join("session-id");
        let sid = String::from_utf8(read_small(&sp)?).map_err(|_| keys_err(&sp, "not UTF-8"))?;
        let session_id = sid.trim().to_string();
        validate_session_id(&session_id).map_err(|e| keys_err(&sp, e))?;
        // The certificate must be issued by this CA for this role.
        let ee = webpki::EndEntityCert::try_from(&cert).map_err(|e| keys_err(&cp, e))?;
        if cert_role(&ee).map_err(|e| keys_err(&cp, e))? != role {
            return Err(keys_err(
                &cp,
                format!("is not a certificate for role {role}"),
            ));
        }
        super::tls::verify_chain(&ca, &cert).map_err(|e| {
            keys_err(
                &cp,
                format!("not issued by {}: {e}", dir.join("ca.crt").display()),
            )
        })?;
        Ok(PartyKeys {
            role,
            ca,
            cert,
            key,
            session_id,
        })
    }
}

/// The role a (chain-verified) certificate is for: exactly one of the role names must match.
pub fn cert_role(ee: &webpki::EndEntityCert<'_>) -> Result<usize, String> {
    let mut found = None;
    for role in 0..PARTIES {
        let name =
            rustls::pki_types::ServerName::try_from(role_name(role)).map_err(|e| e.to_string())?;
        if ee.verify_is_valid_for_subject_name(&name).is_ok() {
            if found.is_some() {
                return Err("certificate names more than one role".into());
            }
            found = Some(role);
        }
    }
    found.ok_or_else(|| "certificate names no relushare party role".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn session_ids() {
        validate_session_id("abc-1.2_x").unwrap();
        assert!(validate_session_id("").is_err());
        assert!(validate_session_id("a b").is_err());
        assert!(validate_session_id(&"x".repeat(65)).is_err());
        let a = random_session_id().unwrap();
        let b = random_session_id().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn generate_and_load() {
        let dir = std::env::temp_dir().join(format!("relushare-pki-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let g = generate(&dir, Some("sess-1"), false).unwrap();
        assert_eq!(g.session_id, "sess-1");
        assert!(
            generate(&dir, None, false).is_err(),
            "must refuse to overwrite"
        );
        for role in 0..PARTIES {
            let k = PartyKeys::load(&dir, role).unwrap();
            assert_eq!(k.session_id, "sess-1");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(key_path(&dir, role))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777;
                assert_eq!(mode, 0o600);
            }
        }
        assert!(!dir.join("party-0.key.tmp").exists());
        // A certificate of one role presented as another is refused.
        fs::copy(cert_path(&dir, 1), cert_path(&dir, 2)).unwrap();
        let err = PartyKeys::load(&dir, 2).unwrap_err().to_string();
        assert!(err.contains("role 2"), "{err}");
        // A key readable by others is refused.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(key_path(&dir, 0), fs::Permissions::from_mode(0o644)).unwrap();
            let err = PartyKeys::load(&dir, 0).unwrap_err().to_string();
            assert!(err.contains("group or others"), "{err}");
        }
        // Certificates of another session's CA are refused.
        let other = dir.join("other");
        generate(&other, Some("sess-2"), false).unwrap();
        fs::copy(other.join("ca.crt"), dir.join("ca.crt")).unwrap();
        let err = PartyKeys::load(&dir, 1).unwrap_err().to_string();
        assert!(err.contains("not issued by"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            /// Mutated certificate files are refused with an error naming the file.
            #[test]
            fn mutated_certificates_are_refused(pos in any::<prop::sample::Index>(), val in any::<u8>()) {
                let dir = std::env::temp_dir().join(format!(
                    "relushare-pki-fuzz-{}-{}",
                    std::process::id(),
                    pos.index(1 << 30)
                ));
                let _ = fs::remove_dir_all(&dir);
                generate(&dir, Some("fuzz"), false).unwrap();
                let p = cert_path(&dir, 1);
                let mut b = fs::read(&p).unwrap();
                let i = pos.index(b.len());
                let changed = b[i] != val;
                b[i] = val;
                fs::write(&p, &b).unwrap();
                let r = PartyKeys::load(&dir, 1);
                let _ = fs::remove_dir_all(&dir);
                if changed {
                    // PEM tolerates some edits (whitespace, a header byte); the DER must still
                    // match this CA and role, so an accepted file certifies role 1 anyway.
                    if let Err(e) = r {
                        prop_assert!(e.to_string().contains("party-1.crt"), "{}", e);
                    }
                } else {
                    prop_assert!(r.is_ok());
                }
            }

            #[test]
            fn random_key_files_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                let dir = std::env::temp_dir().join(format!("relushare-pki-rand-{}", std::process::id()));
                let _ = fs::remove_dir_all(&dir);
                generate(&dir, Some("fuzz"), false).unwrap();
                write_atomic_mode(&key_path(&dir, 0), &bytes, 0o600).unwrap();
                let r = PartyKeys::load(&dir, 0);
                let _ = fs::remove_dir_all(&dir);
                prop_assert!(r.is_err());
            }
        }
    }
}
