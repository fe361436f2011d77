"""``pfmh-ca``: the federation CA command line (init, sign, issue, revoke, crl, list, verify).

Examples::

    pfmh-ca init --dir pki --federation demo
    pfmh-ca sign --dir pki --csr hospital-a.csr --expect hospital-a   # keys made at the site (preferred)
    pfmh-ca issue --dir pki --coordinator
    pfmh-ca issue --dir pki --site hospital-a
    pfmh-ca revoke --dir pki --site hospital-a --reason keyCompromise
    pfmh-ca list --dir pki
    pfmh-ca verify --dir pki pki/hospital-a/tls.crt

Exit codes: 0 success, 1 certificate rejected (``verify``), 2 user error (bad name, missing CA, ...).
See ``security.pki`` for the directory layout.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from security.errors import CertificateRejected, PkiError
from security.pki import CA_CERT, CA_DIRNAME, Role, create_ca, load_ca, write_file_atomic
from security.pki_csr import sign_request
from security.pki_issue import issue_certificate, issued_certificates, publish_crl, revoke
from security.pki_verify import load_certificate, load_crl, verify_peer_certificate

_REASONS = [r.value for r in x509.ReasonFlags if r is not x509.ReasonFlags.remove_from_crl]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pfmh-ca", description="Federation CA for pfmh mTLS identities.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, *, passphrase: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--dir", required=True, type=Path, help="PKI root (ca/ + one dir per identity)")
        if passphrase:
            p.add_argument("--passphrase-file", type=Path, help="file holding the CA key passphrase")
        return p

    p = add("init", "create the federation CA and an empty CRL")
    p.add_argument("--federation", required=True, help="federation id, [a-z0-9.-]{1,63}")
    p.add_argument("--valid-days", type=int, default=3650, help="CA certificate lifetime (default: %(default)s)")
    p = add("sign", "sign a site's certificate request (made with 'pfmh-participant enroll'; keys stay at the site)")
    p.add_argument("--csr", required=True, type=Path, help="the request file (PEM) the site sent")
    p.add_argument("--out", type=Path, help="certificate file to write (default: the CSR path with .crt)")
    p.add_argument("--expect", help="refuse unless the request names this identity")
    p.add_argument("--role", choices=[r.value for r in Role], default=Role.SITE.value,
                   help="role the request must ask for (default: %(default)s)")
    p.add_argument("--valid-days", type=int, default=365, help="certificate lifetime (default: %(default)s)")
    p = add("issue", "issue a TLS certificate + Ed25519 signing key for a site or the coordinator "
                     "(keys made by the CA: prefer 'sign')")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--site", help="site name, [a-z0-9-]{1,63}")
    who.add_argument("--coordinator", action="store_true", help="issue the identity 'coordinator'")
    p.add_argument("--host", action="append", help="SAN IP/DNS (repeatable; default 127.0.0.1, localhost)")
    p.add_argument("--valid-days", type=int, default=365, help="certificate lifetime (default: %(default)s)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--replace", action="store_true",
                     help="overwrite an existing identity with new keys (its old ledger no longer verifies)")
    how.add_argument("--renew", action="store_true",
                     help="new certificate and TLS key for an existing identity, same signing key "
                          "(its ledger keeps verifying)")
    p = add("revoke", "revoke every valid certificate of an identity (or one serial) and publish the CRL")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--site", help="identity name (a site, or 'coordinator')")
    target.add_argument("--serial", help="certificate serial number in hex")
    p.add_argument("--reason", choices=_REASONS, default="unspecified",
                   help="revocation reason recorded in the CRL (default: %(default)s)")
    p = add("crl", "re-publish the CRL with a fresh next-update time")
    p.add_argument("--valid-days", type=int, default=30,
                   help="days until the CRL's next update; refresh it before then (default: %(default)s)")
    add("list", "list issued certificates", passphrase=False)
    p = add("verify", "verify a certificate against this CA and its CRL", passphrase=False)
    p.add_argument("cert", type=Path, help="PEM certificate file")
    p.add_argument("--role", choices=[r.value for r in Role], help="required role (default: any)")
    p.add_argument("--expect", help="required identity name")
    return parser


def _passphrase(args: argparse.Namespace) -> bytes | None:
    path: Path | None = getattr(args, "passphrase_file", None)
    return path.read_bytes().rstrip(b"\r\n") if path is not None else None


def _hex_serial(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise PkiError(f"--serial {text!r} is not a hexadecimal serial; see 'pfmh-ca list'") from None


def _run(args: argparse.Namespace) -> int:
    if args.command == "init":
        ca = create_ca(federation_id=args.federation, out_dir=args.dir, valid_days=args.valid_days,
                       passphrase=_passphrase(args))
        print(f"created CA for federation {ca.federation_id!r} in {args.dir / CA_DIRNAME}")
    elif args.command == "sign":
        ca = load_ca(args.dir, passphrase=_passphrase(args))
        cert = sign_request(ca=ca, csr_pem=args.csr.read_bytes(), expected_name=args.expect,
                            allowed_roles=(Role(args.role),), valid_days=args.valid_days)
        out = args.out or args.csr.with_suffix(".crt")
        write_file_atomic(out, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        print(f"signed {args.role} {name!r} serial {cert.serial_number:x} valid until "
              f"{cert.not_valid_after_utc.isoformat()}: send {out} and {args.dir / CA_DIRNAME / CA_CERT} back")
    elif args.command == "issue":
        ca = load_ca(args.dir, passphrase=_passphrase(args))
        role, name = (Role.COORDINATOR, "coordinator") if args.coordinator else (Role.SITE, args.site)
        ident = issue_certificate(ca=ca, role=role, name=name, hosts=args.host or ("127.0.0.1", "localhost"),
                                  valid_days=args.valid_days, replace=args.replace, renew=args.renew)
        print(f"issued {role.value} {name!r} serial {ident.cert.serial_number:x} "
              f"valid until {ident.cert.not_valid_after_utc.isoformat()} in {ident.directory}")
    elif args.command == "revoke":
        ca = load_ca(args.dir, passphrase=_passphrase(args))
        serial = _hex_serial(args.serial) if args.serial else None
        rows = [r for r in issued_certificates(args.dir) if r.revoked_at is None
                and (r.name == args.site if args.site else r.serial == serial)]
        if not rows:
            what = f"identity {args.site!r}" if args.site else f"serial {args.serial}"
            raise PkiError(f"no valid certificate of {what} in {args.dir}; "
                           f"see 'pfmh-ca list --dir {args.dir}'")
        for row in rows:
            revoke(ca=ca, serial=row.serial, reason=x509.ReasonFlags(args.reason))
            print(f"revoked {row.role.value} {row.name!r} serial {row.serial:x} ({args.reason}); CRL updated")
    elif args.command == "crl":
        crl = publish_crl(ca=load_ca(args.dir, passphrase=_passphrase(args)), valid_days=args.valid_days)
        print(f"published CRL with {len(crl)} revoked; next update {crl.next_update_utc}")
    elif args.command == "list":
        load_ca_cert(args.dir)
        now = dt.datetime.now(dt.UTC)
        print(f"{'SERIAL':<42} {'NAME':<24} {'ROLE':<12} {'NOT_AFTER':<26} STATUS")
        for r in issued_certificates(args.dir):
            status = "revoked" if r.revoked_at else "expired" if r.not_after < now else "valid"
            not_after = r.not_after.isoformat(timespec="seconds")
            print(f"{r.serial:<42x} {r.name:<24} {r.role.value:<12} {not_after:<26} {status}")
    elif args.command == "verify":
        ca_cert = load_ca_cert(args.dir)
        roles = {Role(args.role)} if args.role else set(Role)
        try:
            peer = verify_peer_certificate(load_certificate(args.cert), ca_cert=ca_cert, allowed_roles=roles,
                                           crl=load_crl(args.dir, ca_cert=ca_cert), expected_id=args.expect)
        except CertificateRejected as exc:
            print(f"REJECTED ({exc.reason.value}): {exc.detail}", file=sys.stderr)
            return 1
        print(f"OK {peer.role.value} {peer.site_id!r} serial {peer.serial:x} "
              f"valid until {peer.not_after.isoformat()}")
    return 0


def load_ca_cert(root: Path) -> x509.Certificate:
    """The CA certificate under ``<root>/ca/`` (no private key needed); PkiError if missing."""
    path = root / CA_DIRNAME / CA_CERT
    if not path.is_file():
        raise PkiError(f"no CA at {path.parent}; run 'pfmh-ca init --dir {root} --federation NAME' first")
    return load_certificate(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pfmh-ca``; returns the exit code (argparse usage errors exit 2 via SystemExit)."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (PkiError, CertificateRejected, OSError) as exc:
        print(f"pfmh-ca: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
