//! TLS of a cluster: its own certificate authority (`postgres-<name>-ca`) and a server
//! certificate (`postgres-<name>-server`, `kubernetes.io/tls` with `ca.crt`) valid for
//! every name clients and instances reach PostgreSQL by. Certificates already stored are
//! kept while they are valid for long enough and name every wanted host; otherwise new
//! ones are issued, so renewal is a reconcile like any other and the instances reload the
//! new files without a restart. A cluster whose spec names Secrets of its own
//! (`spec.certificates`, e.g. cert-manager's) gets them copied into the server Secret
//! instead, and no CA of the operator's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::secrets::{ExistingSecrets, secret};
use super::{Cluster, names};

/// Keys of the CA Secret.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
/// Keys of the server Secret (`kubernetes.io/tls`, plus `ca.crt` as cert-manager writes).
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

const DAY: Duration = Duration::from_secs(24 * 3600);
/// The CA outlives many server certificates: replacing it means every client that
/// trusts it must be given the new one.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const CA_RENEW_BEFORE: Duration = Duration::from_secs(365 * 24 * 3600);
/// Server certificates are short-lived and renewed a month ahead: a failing renewal
/// has weeks to be noticed.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
pub const SERVER_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Certificates start a little in the past: a node whose clock is behind still accepts
/// a fresh one.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The Kubernetes cluster's DNS domain, for the fully qualified Service names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("issuing the {what} certificate of {cluster}: {message}")]
    Issue {
        what: &'static str,
        cluster: String,
        message: String,
    },
    /// The spec's own certificate Secrets cannot serve: the user's to mend.
    #[error("{field}: {message}")]
    Provided {
        field: &'static str,
        message: String,
    },
}

/// A certificate and its private key, PEM encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a new certificate must say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub common_name: String,
    /// DNS names (subject alternative names); empty for a CA.
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Source of new certificates and of the time they are judged by.
pub trait CertificateIssuer {
    fn now(&self) -> SystemTime;
    /// A self-signed CA.
    fn issue_ca(&mut self, request: &Request) -> Result<Issued, String>;
    /// A server certificate signed by `ca`.
    fn issue_server(&mut self, request: &Request, ca: &Issued) -> Result<Issued, String>;
}

/// Real certificates: ECDSA P-256 keys from the OS's randomness, signed with rcgen.
#[derive(Clone, Copy, Debug, Default)]
pub struct RcgenIssuer;

fn params(request: &Request) -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(request.names.clone())?;
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, request.common_name.clone());
    subject.push(rcgen::DnType::OrganizationName, "postgres-operator");
    params.distinguished_name = subject;
    params.not_before = time::OffsetDateTime::from(request.not_before);
    params.not_after = time::OffsetDateTime::from(request.not_after);
    Ok(params)
}

impl CertificateIssuer for RcgenIssuer {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn issue_ca(&mut self, request: &Request) -> Result<Issued, String> {
        let issue = || -> Result<Issued, rcgen::Error> {
            let mut params = params(request)?;
            // A name no other CA has, even one issued for a cluster of the same name
            // (deleted and created again): a client trusting several clusters' CAs
            // finds the right one by the issuer's name.
            let mut unique = [0u8; 8];
            rand::fill(&mut unique);
            let unique: String = unique.iter().map(|b| format!("{b:02x}")).collect();
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationalUnitName, unique);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            let key = rcgen::KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            Ok(Issued {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        };
        issue().map_err(|e| e.to_string())
    }

    fn issue_server(&mut self, request: &Request, ca: &Issued) -> Result<Issued, String> {
        let issue = || -> Result<Issued, rcgen::Error> {
            let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem)?;
            let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
            let mut params = params(request)?;
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::DigitalSignature,
                rcgen::KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            let key = rcgen::KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            Ok(Issued {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        };
        issue().map_err(|e| e.to_string())
    }
}

/// [`RcgenIssuer`]'s real certificates, judged at a fixed time (tests of renewal).
#[derive(Clone, Copy, Debug)]
pub struct RcgenIssuerAt(pub SystemTime);

impl CertificateIssuer for RcgenIssuerAt {
    fn now(&self) -> SystemTime {
        self.0
    }

    fn issue_ca(&mut self, request: &Request) -> Result<Issued, String> {
        RcgenIssuer.issue_ca(request)
    }

    fn issue_server(&mut self, request: &Request, ca: &Issued) -> Result<Issued, String> {
        RcgenIssuer.issue_server(request, ca)
    }
}

/// What a stored certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    pub not_after: SystemTime,
    pub names: BTreeSet<String>,
    /// The issuer's and the subject's distinguished names, as text.
    pub issuer: String,
    pub subject: String,
}

/// Reads a PEM certificate; `None` when it is not one.
pub fn inspect(pem: &str) -> Option<Inspected> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|extension| {
            extension
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => ip_text(bytes),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Inspected {
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(not_after),
        names,
        issuer: cert.issuer().to_string(),
        subject: cert.subject().to_string(),
    })
}

/// An IP address SAN (4 or 16 bytes) as text, as rcgen takes it.
fn ip_text(bytes: &[u8]) -> Option<String> {
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(ip.to_string())
}

/// Every name the server certificate must hold: each Service's (short, namespaced,
/// `.svc`, fully qualified), each instance's under the headless Service (a wildcard,
/// since pods come and go with `replicas`), and the external Service's load-balancer
/// addresses once assigned (`external_addresses`, IPs or host names).
pub fn server_names(cluster: &Cluster, external_addresses: &[String]) -> Vec<String> {
    let mut services = vec![
        names::service_rw(&cluster.name),
        names::service_ro(&cluster.name),
        names::service_r(&cluster.name),
        names::service_headless(&cluster.name),
    ];
    if cluster.spec().external {
        services.push(names::service_external(&cluster.name));
    }
    let headless = names::service_headless(&cluster.name);
    let qualified = |host: &str| {
        let namespace = &cluster.namespace;
        [
            host.to_string(),
            format!("{host}.{namespace}"),
            format!("{host}.{namespace}.svc"),
            format!("{host}.{namespace}.svc.{CLUSTER_DOMAIN}"),
        ]
    };
    let external = external_addresses
        .iter()
        .filter(|_| cluster.spec().external)
        .cloned();
    services
        .iter()
        .flat_map(|service| qualified(service))
        .chain(qualified(&format!("*.{headless}")))
        .chain(external)
        .collect()
}

fn pem_of(existing: &ExistingSecrets, secret: &str, key: &str) -> Option<String> {
    let secret = existing.get(secret)?;
    let ByteString(bytes) = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.clone()).ok()
}

/// The stored pair when it is still good: parseable and valid for more than `renew_before`.
fn still_good(
    cert_pem: Option<String>,
    key_pem: Option<String>,
    now: SystemTime,
    renew_before: Duration,
) -> Option<(Issued, Inspected)> {
    let (cert_pem, key_pem) = (cert_pem?, key_pem?);
    let inspected = inspect(&cert_pem)?;
    let remaining = inspected.not_after.duration_since(now).ok()?;
    (remaining > renew_before && !key_pem.trim().is_empty())
        .then_some((Issued { cert_pem, key_pem }, inspected))
}

/// The CA and server Secrets: what is stored, or new certificates where it is missing,
/// expiring, or (the server's) signed by another CA or short of a wanted name. With the
/// spec's own certificate Secrets (see [`provided_server_secret`]), the server Secret is
/// their copy and there is no CA Secret.
pub fn desired_tls_secrets(
    cluster: &Cluster,
    existing: &ExistingSecrets,
    external_addresses: &[String],
    issuer: &mut dyn CertificateIssuer,
) -> Result<Vec<Secret>, TlsError> {
    if cluster.spec().certificates.is_some() {
        return Ok(provided_server_secret(cluster, existing)?
            .into_iter()
            .collect());
    }
    let now = issuer.now();
    let ca_secret = names::secret_ca(&cluster.name);
    let server_secret = names::secret_server(&cluster.name);
    let failed = |what: &'static str| {
        move |message: String| TlsError::Issue {
            what,
            cluster: format!("{}/{}", cluster.namespace, cluster.name),
            message,
        }
    };

    let stored_ca = still_good(
        pem_of(existing, &ca_secret, CA_CERT),
        pem_of(existing, &ca_secret, CA_KEY),
        now,
        CA_RENEW_BEFORE,
    );
    let ca = match stored_ca {
        Some((ca, _)) => ca,
        None => issuer
            .issue_ca(&Request {
                common_name: format!("{} CA", names::prefix(&cluster.name)),
                names: Vec::new(),
                not_before: now - BACKDATE,
                not_after: now + CA_VALIDITY,
            })
            .map_err(failed("CA"))?,
    };

    let wanted: Vec<String> = server_names(cluster, external_addresses);
    let stored_server = still_good(
        pem_of(existing, &server_secret, TLS_CERT),
        pem_of(existing, &server_secret, TLS_KEY),
        now,
        SERVER_RENEW_BEFORE,
    )
    .filter(|(_, inspected)| wanted.iter().all(|name| inspected.names.contains(name)))
    .filter(|_| pem_of(existing, &server_secret, CA_CERT).as_deref() == Some(&ca.cert_pem))
    .filter(|(_, inspected)| {
        inspect(&ca.cert_pem).is_some_and(|authority| authority.subject == inspected.issuer)
    });
    let server = match stored_server {
        Some((server, _)) => server,
        None => issuer
            .issue_server(
                &Request {
                    common_name: names::service_rw(&cluster.name),
                    names: wanted,
                    not_before: now - BACKDATE,
                    not_after: now + SERVER_VALIDITY,
                },
                &ca,
            )
            .map_err(failed("server"))?,
    };

    let values = |pairs: &[(&str, &String)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), (*value).clone()))
            .collect()
    };
    Ok(vec![
        secret(
            cluster,
            ca_secret,
            "Opaque",
            &values(&[(CA_CERT, &ca.cert_pem), (CA_KEY, &ca.key_pem)]),
        ),
        secret(
            cluster,
            server_secret,
            "kubernetes.io/tls",
            &values(&[
                (TLS_CERT, &server.cert_pem),
                (TLS_KEY, &server.key_pem),
                (CA_CERT, &ca.cert_pem),
            ]),
        ),
    ])
}

/// The server Secret copied from the spec's `certificates` Secrets, found in `existing`
/// (the controller reads them by name; `render`, which cannot, leaves the copy out):
/// `tls.crt` and `tls.key` of `serverTLSSecret`, `ca.crt` of `serverCASecret` or else of
/// `serverTLSSecret`. A Secret without a key, or a `tls.crt` that is no certificate, is an
/// error naming the field.
pub fn provided_server_secret(
    cluster: &Cluster,
    existing: &ExistingSecrets,
) -> Result<Option<Secret>, TlsError> {
    let Some(provided) = cluster.spec().certificates.as_ref() else {
        return Ok(None);
    };
    let tls_field = "spec.certificates.serverTLSSecret";
    let ca_field = "spec.certificates.serverCASecret";
    if provided.server_tls_secret == names::secret_server(&cluster.name)
        || provided.server_ca_secret.as_deref() == Some(&names::secret_server(&cluster.name))
    {
        return Err(TlsError::Provided {
            field: tls_field,
            message: format!(
                "Secret {:?} is the operator's own copy; name the Secret that holds your certificate",
                names::secret_server(&cluster.name)
            ),
        });
    }
    if !existing.contains_key(&provided.server_tls_secret) {
        return Ok(None);
    }
    let key_of = |field: &'static str, secret: &str, key: &str| {
        pem_of(existing, secret, key)
            .filter(|pem| !pem.trim().is_empty())
            .ok_or_else(|| TlsError::Provided {
                field,
                message: format!("Secret {secret:?} has no {key:?} key"),
            })
    };
    let cert = key_of(tls_field, &provided.server_tls_secret, TLS_CERT)?;
    let key = key_of(tls_field, &provided.server_tls_secret, TLS_KEY)?;
    let ca = match &provided.server_ca_secret {
        Some(ca_secret) => {
            if !existing.contains_key(ca_secret) {
                return Ok(None);
            }
            key_of(ca_field, ca_secret, CA_CERT)?
        }
        None => key_of(tls_field, &provided.server_tls_secret, CA_CERT).map_err(|_| {
            TlsError::Provided {
                field: tls_field,
                message: format!(
                    "Secret {:?} has no {CA_CERT:?} key: set serverCASecret to a Secret with the CA the certificate chains to",
                    provided.server_tls_secret
                ),
            }
        })?,
    };
    if inspect(&cert).is_none() {
        return Err(TlsError::Provided {
            field: tls_field,
            message: format!(
                "{TLS_CERT:?} of Secret {:?} is not a PEM certificate",
                provided.server_tls_secret
            ),
        });
    }
    if inspect(&ca).is_none() {
        return Err(TlsError::Provided {
            field: if provided.server_ca_secret.is_some() {
                ca_field
            } else {
                tls_field
            },
            message: format!("{CA_CERT:?} is not a PEM certificate"),
        });
    }
    let values = BTreeMap::from([
        (TLS_CERT.to_string(), cert),
        (TLS_KEY.to_string(), key),
        (CA_CERT.to_string(), ca),
    ]);
    Ok(Some(secret(
        cluster,
        names::secret_server(&cluster.name),
        "kubernetes.io/tls",
        &values,
    )))
}

/// The names of [`server_names`] a provided certificate lacks (wildcards match one
/// label, as TLS clients match them).
pub fn missing_names(cert_pem: &str, wanted: &[String]) -> Vec<String> {
    let Some(inspected) = inspect(cert_pem) else {
        return wanted.to_vec();
    };
    wanted
        .iter()
        .filter(|name| {
            !inspected
                .names
                .iter()
                .any(|have| have == *name || wildcard_covers(have, name))
        })
        .cloned()
        .collect()
}

fn wildcard_covers(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    // A wanted wildcard (the instances' names) is only covered by the same wildcard.
    !name.starts_with("*.")
        && name
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix)
}

/// Stand-in certificates for snapshots and tests that do not look inside them: text that
/// says what a real issuer would have issued, never parsed as a certificate (so a
/// reconcile with it issues again; the operator itself never uses it).
#[derive(Clone, Debug)]
pub struct PlaceholderIssuer {
    pub now: SystemTime,
}

impl Default for PlaceholderIssuer {
    fn default() -> Self {
        Self {
            // 2026-01-01T00:00:00Z: snapshots do not change with the day they run.
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
        }
    }
}

impl CertificateIssuer for PlaceholderIssuer {
    fn now(&self) -> SystemTime {
        self.now
    }

    fn issue_ca(&mut self, request: &Request) -> Result<Issued, String> {
        Ok(placeholder(request, "CA"))
    }

    fn issue_server(&mut self, request: &Request, _ca: &Issued) -> Result<Issued, String> {
        Ok(placeholder(request, "server"))
    }
}

fn placeholder(request: &Request, what: &str) -> Issued {
    let days = request
        .not_after
        .duration_since(request.not_before)
        .unwrap_or_default()
        .as_secs()
        / DAY.as_secs();
    Issued {
        cert_pem: format!(
            "placeholder {what} certificate: CN={}, {} names, {days} days\n",
            request.common_name,
            request.names.len()
        ),
        key_pem: format!("placeholder {what} key\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::test_support::cluster_from_yaml;

    fn issue(cluster: &Cluster, existing: &ExistingSecrets, now: SystemTime) -> Vec<Secret> {
        desired_tls_secrets(cluster, existing, &[], &mut RcgenIssuerAt(now)).unwrap()
    }

    fn by_name(secrets: Vec<Secret>) -> ExistingSecrets {
        secrets
            .into_iter()
            .map(|s| (s.metadata.name.clone().unwrap(), s))
            .collect()
    }

    fn value(secrets: &ExistingSecrets, secret: &str, key: &str) -> String {
        pem_of(secrets, secret, key).unwrap()
    }

    #[test]
    fn a_new_cluster_gets_a_ca_and_a_server_certificate_for_every_service_name() {
        let (pg, settings) = cluster_from_yaml("external: true\n");
        let cluster = Cluster::new(&pg, "ns", &settings);
        let now = SystemTime::now();
        let secrets = by_name(issue(&cluster, &ExistingSecrets::new(), now));
        let ca = inspect(&value(&secrets, "postgres-demo-ca", CA_CERT)).unwrap();
        let server = inspect(&value(&secrets, "postgres-demo-server", TLS_CERT)).unwrap();
        assert_eq!(server.issuer, ca.subject);
        assert_eq!(
            value(&secrets, "postgres-demo-server", CA_CERT),
            value(&secrets, "postgres-demo-ca", CA_CERT)
        );
        for name in [
            "postgres-demo-rw",
            "postgres-demo-rw.ns",
            "postgres-demo-rw.ns.svc",
            "postgres-demo-rw.ns.svc.cluster.local",
            "postgres-demo-ro.ns.svc",
            "postgres-demo-r.ns.svc",
            "postgres-demo-external-write.ns.svc",
            "*.postgres-demo-headless.ns.svc",
            "*.postgres-demo-headless.ns.svc.cluster.local",
        ] {
            assert!(
                server.names.contains(name),
                "{name} missing: {:?}",
                server.names
            );
        }
        let left = server.not_after.duration_since(now).unwrap();
        assert!(left > SERVER_VALIDITY - DAY && left <= SERVER_VALIDITY);
        assert!(ca.not_after.duration_since(now).unwrap() > CA_VALIDITY - DAY);
        assert_eq!(
            secrets["postgres-demo-server"].type_.as_deref(),
            Some("kubernetes.io/tls")
        );
        assert!(value(&secrets, "postgres-demo-server", TLS_KEY).contains("PRIVATE KEY"));
    }

    #[test]
    fn stored_certificates_are_kept_until_a_month_before_they_expire() {
        let (pg, settings) = cluster_from_yaml("{}");
        let cluster = Cluster::new(&pg, "ns", &settings);
        let now = SystemTime::now();
        let first = by_name(issue(&cluster, &ExistingSecrets::new(), now));
        let later = now + SERVER_VALIDITY - SERVER_RENEW_BEFORE - DAY;
        assert_eq!(by_name(issue(&cluster, &first, later)), first);
        // Inside the renewal window: a new server certificate from the same CA.
        let renewal = now + SERVER_VALIDITY - SERVER_RENEW_BEFORE + DAY;
        let renewed = by_name(issue(&cluster, &first, renewal));
        assert_eq!(renewed["postgres-demo-ca"], first["postgres-demo-ca"]);
        assert_ne!(
            value(&renewed, "postgres-demo-server", TLS_CERT),
            value(&first, "postgres-demo-server", TLS_CERT)
        );
        let new = inspect(&value(&renewed, "postgres-demo-server", TLS_CERT)).unwrap();
        assert!(new.not_after.duration_since(renewal).unwrap() > SERVER_VALIDITY - DAY);
        // The CA a year before its end: a new CA and a server certificate it signed.
        let ca_renewal = now + CA_VALIDITY - CA_RENEW_BEFORE + DAY;
        let both = by_name(issue(&cluster, &first, ca_renewal));
        assert_ne!(both["postgres-demo-ca"], first["postgres-demo-ca"]);
        assert_eq!(
            value(&both, "postgres-demo-server", CA_CERT),
            value(&both, "postgres-demo-ca", CA_CERT)
        );
    }

    #[test]
    fn a_new_service_name_or_a_damaged_secret_gets_a_new_server_certificate() {
        let (pg, settings) = cluster_from_yaml("{}");
        let now = SystemTime::now();
        let first = by_name(issue(
            &Cluster::new(&pg, "ns", &settings),
            &ExistingSecrets::new(),
            now,
        ));
        let (external, settings) = cluster_from_yaml("external: true\n");
        let grown = by_name(issue(
            &Cluster::new(&external, "ns", &settings),
            &first,
            now,
        ));
        assert_eq!(grown["postgres-demo-ca"], first["postgres-demo-ca"]);
        let names = inspect(&value(&grown, "postgres-demo-server", TLS_CERT))
            .unwrap()
            .names;
        assert!(names.contains("postgres-demo-external-write.ns.svc"));

        let mut damaged = first.clone();
        damaged
            .get_mut("postgres-demo-server")
            .unwrap()
            .data
            .as_mut()
            .unwrap()
            .insert(
                TLS_CERT.to_string(),
                ByteString(b"not a certificate".to_vec()),
            );
        let repaired = by_name(issue(&Cluster::new(&pg, "ns", &settings), &damaged, now));
        assert!(inspect(&value(&repaired, "postgres-demo-server", TLS_CERT)).is_some());
        assert_eq!(repaired["postgres-demo-ca"], first["postgres-demo-ca"]);
    }

    #[test]
    fn a_server_certificate_from_another_ca_is_replaced() {
        let (pg, settings) = cluster_from_yaml("{}");
        let cluster = Cluster::new(&pg, "ns", &settings);
        let now = SystemTime::now();
        let first = by_name(issue(&cluster, &ExistingSecrets::new(), now));
        let other = by_name(issue(&cluster, &ExistingSecrets::new(), now));
        let mut mixed = first.clone();
        mixed.insert(
            "postgres-demo-server".into(),
            other["postgres-demo-server"].clone(),
        );
        let fixed = by_name(issue(&cluster, &mixed, now));
        assert_eq!(fixed["postgres-demo-ca"], first["postgres-demo-ca"]);
        let server = inspect(&value(&fixed, "postgres-demo-server", TLS_CERT)).unwrap();
        let ca = inspect(&value(&first, "postgres-demo-ca", CA_CERT)).unwrap();
        assert_eq!(server.issuer, ca.subject);
        assert_ne!(fixed["postgres-demo-server"], other["postgres-demo-server"]);
    }

    #[test]
    fn the_external_address_is_named_once_the_load_balancer_has_one() {
        let (pg, settings) = cluster_from_yaml("external: true\n");
        let cluster = Cluster::new(&pg, "ns", &settings);
        let now = SystemTime::now();
        let before = by_name(issue(&cluster, &ExistingSecrets::new(), now));
        // The same Secrets, asked again with an address: a new server certificate with
        // it (an IP address name), from the same CA.
        let addresses = ["203.0.113.7".to_string(), "db.example.org".to_string()];
        let after = by_name(
            desired_tls_secrets(&cluster, &before, &addresses, &mut RcgenIssuerAt(now)).unwrap(),
        );
        assert_eq!(after["postgres-demo-ca"], before["postgres-demo-ca"]);
        let server = inspect(&value(&after, "postgres-demo-server", TLS_CERT)).unwrap();
        assert!(server.names.contains("203.0.113.7"), "{:?}", server.names);
        assert!(server.names.contains("db.example.org"));
        // Kept as long as the addresses stay.
        let again = by_name(
            desired_tls_secrets(&cluster, &after, &addresses, &mut RcgenIssuerAt(now)).unwrap(),
        );
        assert_eq!(again, after);
        // Without `external`, a stale address is no name of the cluster.
        let (internal, settings) = cluster_from_yaml("{}");
        let internal = Cluster::new(&internal, "ns", &settings);
        assert!(!server_names(&internal, &addresses).contains(&addresses[0]));
    }

    /// A cert-manager-like Secret: a certificate for `names` from a CA of its own.
    fn provided(names: &[&str], with_ca: bool) -> (Secret, String) {
        let mut issuer = RcgenIssuerAt(SystemTime::now());
        let (pg, settings) = cluster_from_yaml("{}");
        let cluster = Cluster::new(&pg, "ns", &settings);
        let request = |names: Vec<String>| Request {
            common_name: "db".to_string(),
            names,
            not_before: SystemTime::now() - DAY,
            not_after: SystemTime::now() + SERVER_VALIDITY,
        };
        let ca = issuer.issue_ca(&request(Vec::new())).unwrap();
        let server = issuer
            .issue_server(&request(names.iter().map(|n| n.to_string()).collect()), &ca)
            .unwrap();
        let mut values = BTreeMap::from([
            (TLS_CERT.to_string(), server.cert_pem),
            (TLS_KEY.to_string(), server.key_pem),
        ]);
        if with_ca {
            values.insert(CA_CERT.to_string(), ca.cert_pem.clone());
        }
        let mut secret = secret(
            &cluster,
            "my-cert".to_string(),
            "kubernetes.io/tls",
            &values,
        );
        secret.metadata.owner_references = None;
        (secret, ca.cert_pem)
    }

    fn with_certificates(yaml: &str) -> (crate::api::Postgres, crate::manifests::OperatorSettings) {
        cluster_from_yaml(&format!("certificates:\n{yaml}"))
    }

    #[test]
    fn a_provided_certificate_is_copied_and_no_ca_is_issued() {
        let (pg, settings) = with_certificates("  serverTLSSecret: my-cert\n");
        let cluster = Cluster::new(&pg, "ns", &settings);
        let (secret, ca) = provided(&["postgres-demo-rw.ns.svc"], true);
        let existing = ExistingSecrets::from([("my-cert".to_string(), secret.clone())]);
        let copied = by_name(
            desired_tls_secrets(&cluster, &existing, &[], &mut PlaceholderIssuer::default())
                .unwrap(),
        );
        assert_eq!(copied.keys().collect::<Vec<_>>(), ["postgres-demo-server"]);
        for key in [TLS_CERT, TLS_KEY] {
            assert_eq!(
                value(&copied, "postgres-demo-server", key),
                value(&existing, "my-cert", key)
            );
        }
        assert_eq!(value(&copied, "postgres-demo-server", CA_CERT), ca);
        // Not there yet (cert-manager still issuing, or `render`): no copy, no error.
        assert!(
            desired_tls_secrets(
                &cluster,
                &ExistingSecrets::new(),
                &[],
                &mut PlaceholderIssuer::default()
            )
            .unwrap()
            .is_empty()
        );

        // The CA from a Secret of its own.
        let (pg, settings) =
            with_certificates("  serverTLSSecret: my-cert\n  serverCASecret: my-ca\n");
        let cluster = Cluster::new(&pg, "ns", &settings);
        let (without_ca, ca) = provided(&["postgres-demo-rw.ns.svc"], false);
        let mut ca_secret = without_ca.clone();
        ca_secret.data = Some(BTreeMap::from([(
            CA_CERT.to_string(),
            ByteString(ca.clone().into_bytes()),
        )]));
        let existing = ExistingSecrets::from([
            ("my-cert".to_string(), without_ca),
            ("my-ca".to_string(), ca_secret),
        ]);
        let copied = by_name(
            desired_tls_secrets(&cluster, &existing, &[], &mut PlaceholderIssuer::default())
                .unwrap(),
        );
        assert_eq!(value(&copied, "postgres-demo-server", CA_CERT), ca);
    }

    #[test]
    fn a_provided_secret_that_cannot_serve_is_refused_naming_the_field() {
        let (pg, settings) = with_certificates("  serverTLSSecret: my-cert\n");
        let cluster = Cluster::new(&pg, "ns", &settings);
        let refused = |secret: Secret| {
            let existing = ExistingSecrets::from([("my-cert".to_string(), secret)]);
            desired_tls_secrets(&cluster, &existing, &[], &mut PlaceholderIssuer::default())
                .unwrap_err()
                .to_string()
        };
        let (no_ca, _) = provided(&["x"], false);
        let message = refused(no_ca);
        assert!(
            message.starts_with("spec.certificates.serverTLSSecret: Secret \"my-cert\" has no \"ca.crt\" key: set serverCASecret"),
            "{message}"
        );
        let (mut no_key, _) = provided(&["x"], true);
        no_key.data.as_mut().unwrap().remove(TLS_KEY);
        assert_eq!(
            refused(no_key),
            "spec.certificates.serverTLSSecret: Secret \"my-cert\" has no \"tls.key\" key"
        );
        let (mut garbled, _) = provided(&["x"], true);
        garbled.data.as_mut().unwrap().insert(
            TLS_CERT.to_string(),
            ByteString(b"not a certificate".to_vec()),
        );
        assert_eq!(
            refused(garbled),
            "spec.certificates.serverTLSSecret: \"tls.crt\" of Secret \"my-cert\" is not a PEM certificate"
        );
        let (pg, settings) = with_certificates("  serverTLSSecret: postgres-demo-server\n");
        let own = Cluster::new(&pg, "ns", &settings);
        let message = desired_tls_secrets(
            &own,
            &ExistingSecrets::new(),
            &[],
            &mut PlaceholderIssuer::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(message.contains("the operator's own copy"), "{message}");
    }

    #[test]
    fn missing_names_match_wildcards_as_tls_clients_do() {
        let (cert, _) = provided(
            &[
                "postgres-demo-rw.ns.svc",
                "*.ns.svc",
                "*.postgres-demo-headless.ns.svc",
            ],
            true,
        );
        let pem = String::from_utf8(cert.data.unwrap()[TLS_CERT].0.clone()).unwrap();
        let wanted = [
            "postgres-demo-rw.ns.svc",
            "postgres-demo-ro.ns.svc",
            "*.postgres-demo-headless.ns.svc",
            "*.postgres-demo-headless.ns.svc.cluster.local",
            "postgres-demo-rw.ns.svc.cluster.local",
        ]
        .map(String::from);
        assert_eq!(
            missing_names(&pem, &wanted),
            [
                "*.postgres-demo-headless.ns.svc.cluster.local",
                "postgres-demo-rw.ns.svc.cluster.local"
            ]
        );
    }
}
