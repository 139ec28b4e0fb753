//! S/MIME `multipart/signed` with a detached PKCS#7 signature, as `openssl smime -sign` writes.
//!
//! The signed bytes are the first MIME part with every line ending made CRLF; OpenSSL's S/MIME
//! reader returns exactly those bytes, so nothing is re-serialised before checking the digest.

use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::pkey::{PKeyRef, Private};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509Ref, X509};

#[derive(Debug, thiserror::Error)]
pub enum SmimeError {
    #[error("not an S/MIME message")]
    NotSmime(#[source] openssl::error::ErrorStack),
    #[error(
        "not an S/MIME message: line {line}, a MIME header line, holds a byte that is not ASCII"
    )]
    HeaderNotAscii { line: usize },
    #[error("the S/MIME message has no detached content part (not multipart/signed)")]
    NotDetached,
    #[error("the PKCS#7 structure is not signed data")]
    NotSignedData,
    #[error("the signature names no signer certificate")]
    NoSigner(#[source] openssl::error::ErrorStack),
    #[error("the signature has {count} signers; exactly one is required")]
    SignerCount { count: usize },
    #[error("the signature does not match the signed content")]
    BadSignature(#[source] openssl::error::ErrorStack),
    #[error("cannot create the signature")]
    Sign(#[source] openssl::error::ErrorStack),
}

/// A parsed, not yet checked, signed message.
pub struct SignedMessage {
    pub pkcs7: Pkcs7,
    /// The signed content (first MIME part, CRLF line endings).
    pub content: Vec<u8>,
}

impl SignedMessage {
    pub fn parse(raw: &[u8]) -> Result<SignedMessage, SmimeError> {
        check_header_bytes(raw)?;
        let (pkcs7, content) = Pkcs7::from_smime(raw).map_err(SmimeError::NotSmime)?;
        let content = content.ok_or(SmimeError::NotDetached)?;
        if pkcs7.signed().is_none() {
            return Err(SmimeError::NotSignedData);
        }
        Ok(SignedMessage { pkcs7, content })
    }

    /// Certificates carried in the signature (the signer and any intermediates).
    pub fn certificates(&self) -> Vec<X509> {
        self.pkcs7
            .signed()
            .and_then(|s| s.certificates())
            .map(|st| st.iter().map(|c| c.to_owned()).collect())
            .unwrap_or_default()
    }

    /// The one signer certificate embedded in the signature.
    pub fn signer(&self) -> Result<X509, SmimeError> {
        let none = Stack::new().map_err(SmimeError::NoSigner)?;
        let signers = self
            .pkcs7
            .signers(&none, Pkcs7Flags::empty())
            .map_err(SmimeError::NoSigner)?;
        if signers.len() != 1 {
            return Err(SmimeError::SignerCount {
                count: signers.len(),
            });
        }
        Ok(signers.get(0).expect("one signer").to_owned())
    }

    /// Check the digest and signature over the content, without judging the signer.
    pub fn check_signature(&self) -> Result<(), SmimeError> {
        let none = Stack::new().map_err(SmimeError::BadSignature)?;
        let store = X509StoreBuilder::new()
            .map_err(SmimeError::BadSignature)?
            .build();
        self.pkcs7
            .verify(
                &none,
                &store,
                Some(&self.content),
                None,
                Pkcs7Flags::NOVERIFY,
            )
            .map_err(SmimeError::BadSignature)
    }
}

/// OpenSSL's MIME reader copies header values (a wrong Content-Type) into its error queue,
/// and the openssl crate panics on error text that is not UTF-8 (`ErrorStack::get` unwraps
/// it), so a list with such a header would panic instead of being refused. MIME headers are
/// ASCII (RFC 2045), so anything else in a line OpenSSL may read as a header is refused here,
/// before OpenSSL sees it. The lines are cut as OpenSSL's `BIO_gets` cuts them (at most 1023
/// bytes), so a long line cannot hide a boundary or split a character.
fn check_header_bytes(raw: &[u8]) -> Result<(), SmimeError> {
    // Same as OpenSSL's MAX_SMLEN - 1.
    const MAX_LINE: usize = 1023;
    // The message starts with its headers; every part boundary (`--…`) starts new ones.
    let mut in_header = true;
    let mut line = 1;
    let mut rest = raw;
    while !rest.is_empty() {
        let len = rest
            .iter()
            .take(MAX_LINE)
            .position(|&b| b == b'\n')
            .map_or(rest.len().min(MAX_LINE), |i| i + 1);
        let (piece, tail) = rest.split_at(len);
        if piece.starts_with(b"--") {
            in_header = true;
        } else if matches!(piece.first(), Some(b'\r' | b'\n')) {
            in_header = false;
        }
        if in_header && !piece.is_ascii() {
            return Err(SmimeError::HeaderNotAscii { line });
        }
        if piece.ends_with(b"\n") {
            line += 1;
        }
        rest = tail;
    }
    Ok(())
}

/// The `micalg` parameter of the message header (`sha1`, `sha-256`, …), if any.
pub fn micalg(raw: &[u8]) -> Option<String> {
    let head_end = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .or_else(|| raw.windows(4).position(|w| w == b"\r\n\r\n"))
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let at = head.find("micalg=")? + "micalg=".len();
    let rest = head[at..].trim_start_matches('"');
    let end = rest
        .find(|c: char| c == '"' || c == ';' || c.is_whitespace())
        .unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// Sign `content` as `openssl smime -sign` does: detached, signer certificate embedded,
/// `extra_certs` (intermediate CAs) added. The result verifies with `openssl smime -verify`.
pub fn sign(
    content: &[u8],
    cert: &X509Ref,
    key: &PKeyRef<Private>,
    extra_certs: &[X509],
) -> Result<Vec<u8>, SmimeError> {
    let mut chain = Stack::new().map_err(SmimeError::Sign)?;
    for c in extra_certs {
        chain.push(c.clone()).map_err(SmimeError::Sign)?;
    }
    let p7 =
        Pkcs7::sign(cert, key, &chain, content, Pkcs7Flags::DETACHED).map_err(SmimeError::Sign)?;
    p7.to_smime(content, Pkcs7Flags::DETACHED)
        .map_err(SmimeError::Sign)
}

/// Whether S/MIME consumers (`openssl smime -verify`, vmcatcher, atrope) accept `cert` as a
/// signer: OpenSSL's own S/MIME-signing purpose check of the leaf (key usage, extended key
/// usage), judged alone. `Err` carries OpenSSL's reason. The chain is the verifier's
/// business; this catches the certificate made for another purpose (TLS only, say).
pub fn smime_signing_fitness(cert: &X509Ref) -> Result<(), String> {
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::verify::{X509VerifyFlags, X509VerifyParam};
    use openssl::x509::{X509PurposeId, X509StoreContext};
    let judge = || -> Result<Result<(), String>, openssl::error::ErrorStack> {
        // The leaf as its own trust anchor (PARTIAL_CHAIN), times ignored: only the purpose
        // can fail.
        let mut b = X509StoreBuilder::new()?;
        b.add_cert(cert.to_owned())?;
        let mut param = X509VerifyParam::new()?;
        param.set_flags(X509VerifyFlags::PARTIAL_CHAIN | X509VerifyFlags::NO_CHECK_TIME)?;
        param.set_purpose(X509PurposeId::SMIME_SIGN)?;
        b.set_param(&param)?;
        let store = b.build();
        let mut ctx = X509StoreContext::new()?;
        let chain = Stack::new()?;
        ctx.init(&store, cert, &chain, |c| {
            Ok(if c.verify_cert()? {
                Ok(())
            } else {
                Err(c.error().error_string().to_string())
            })
        })
    };
    judge().map_err(|e| e.to_string())?
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read {}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    Certificate {
        path: std::path::PathBuf,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("{} holds no unencrypted PEM private key", path.display())]
    Key {
        path: std::path::PathBuf,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("the private key in {} does not belong to the certificate", path.display())]
    KeyMismatch { path: std::path::PathBuf },
}

/// A signing credential: the certificate (first in the file), any further certificates in
/// the same file (intermediates, embedded in signatures) and the private key.
pub struct Credentials {
    pub cert: X509,
    pub chain: Vec<X509>,
    pub key: openssl::pkey::PKey<Private>,
}

impl Credentials {
    pub fn load(
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Credentials, CredentialError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| CredentialError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let mut certs = X509::stack_from_pem(&read(cert)?)
            .ok()
            .filter(|v| !v.is_empty())
            .map(Ok)
            .unwrap_or_else(|| {
                X509::from_pem(b"").map(|c| vec![c]).map_err(|source| {
                    CredentialError::Certificate {
                        path: cert.to_path_buf(),
                        source,
                    }
                })
            })?;
        let k = openssl::pkey::PKey::private_key_from_pem(&read(key)?).map_err(|source| {
            CredentialError::Key {
                path: key.to_path_buf(),
                source,
            }
        })?;
        let leaf = certs.remove(0);
        let matches = leaf.public_key().map(|p| p.public_eq(&k)).unwrap_or(false);
        if !matches {
            return Err(CredentialError::KeyMismatch {
                path: key.to_path_buf(),
            });
        }
        Ok(Credentials {
            cert: leaf,
            chain: certs,
            key: k,
        })
    }

    /// Sign `content` with these credentials.
    pub fn sign(&self, content: &[u8]) -> Result<Vec<u8>, SmimeError> {
        sign(content, &self.cert, &self.key, &self.chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Found by the `imagelist` fuzz target: a Content-Type that is not UTF-8 ends up in
    // OpenSSL's error text, which the openssl crate unwraps as UTF-8 and panics.
    #[test]
    fn a_header_that_is_not_ascii_is_refused_not_a_panic() {
        let raw =
            b"MIME-Version: 1.0\nContent-Type: multipart/si\xff\xffgned; boundary=\"b\"\n\nx\n";
        let e = SignedMessage::parse(raw).err().expect("refused");
        assert!(matches!(e, SmimeError::HeaderNotAscii { line: 2 }), "{e:?}");
        // The signature part's own headers are read by OpenSSL too.
        let raw = b"Content-Type: multipart/signed; protocol=\"application/x-pkcs7-signature\"; boundary=\"b\"\n\n--b\n\n{}\n--b\nContent-Type: application/\xe9\n\nAAAA\n--b--\n";
        let e = SignedMessage::parse(raw).err().expect("refused");
        assert!(matches!(e, SmimeError::HeaderNotAscii { line: 7 }), "{e:?}");
    }

    #[test]
    fn a_content_part_that_is_not_ascii_is_left_to_openssl() {
        // UTF-8 in the signed content is legitimate (list titles); only headers are ASCII.
        let raw = "Content-Type: multipart/signed; boundary=\"b\"\n\n--b\n\n{\"t\": \"caf\u{e9}\"}\n--b\n";
        assert!(check_header_bytes(raw.as_bytes()).is_ok());
        // A line longer than OpenSSL reads at once is cut where OpenSSL cuts it: the piece
        // after the cut starting with `--` is a boundary to OpenSSL, so headers follow.
        let mut long = b"Content-Type: text/plain\n\n".to_vec();
        long.extend(std::iter::repeat_n(b'a', 1023));
        long.extend(b"--b\nContent-Type: \xc3\xa9\n");
        assert!(matches!(
            check_header_bytes(&long),
            Err(SmimeError::HeaderNotAscii { line: 4 })
        ));
    }
}
