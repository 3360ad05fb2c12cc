//! The user a client certificate names (`--client-cert-auth`): as etcd, its subject's
//! Common Name. Read with yasna, an ASN.1 DER reader.

use yasna::models::ObjectIdentifier;
use yasna::Tag;

/// The subject Common Name of a DER certificate (the last, as Go's x509 keeps), if any.
pub fn common_name(der: &[u8]) -> Option<String> {
    let subject = yasna::parse_der(der, |r| {
        r.read_sequence(|cert| {
            let subject = cert.next().read_sequence(|tbs| {
                // version [0] EXPLICIT (optional), serial, signature, issuer, validity.
                tbs.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                for _ in 0..4 {
                    tbs.next().read_der()?;
                }
                let subject = tbs.next().read_der()?;
                // The key and any extensions.
                while tbs.read_optional(|r| r.read_der())?.is_some() {}
                Ok(subject)
            })?;
            cert.next().read_der()?;
            cert.next().read_der()?;
            Ok(subject)
        })
    })
    .ok()?;
    let cn_oid = ObjectIdentifier::from_slice(&[2, 5, 4, 3]);
    let mut cn = None;
    yasna::parse_der(&subject, |r| {
        r.read_sequence_of(|rdn| {
            rdn.read_set_of(|atv| {
                atv.read_sequence(|a| {
                    let oid = a.next().read_oid()?;
                    let value = a.next().read_tagged_der()?;
                    if oid == cn_oid {
                        cn = String::from_utf8(value.value().to_vec()).ok();
                    }
                    Ok(())
                })
            })
        })
    })
    .ok()?;
    cn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_of_a_generated_certificate_is_found() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "cairn tests");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(common_name(cert.der()), Some("alice".into()));
        let mut plain = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        plain.distinguished_name = rcgen::DistinguishedName::new();
        let none = plain.self_signed(&key).expect("cert");
        assert_eq!(common_name(none.der()), None);
        assert_eq!(common_name(b"not a certificate"), None);
    }
}
