"""``photonstream ca issue-user --p12`` and ``ca export-p12``: a user's certificate for a browser, run as the real
commands, the file read back with ``cryptography``'s PKCS#12 loader."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12
from cryptography.x509.oid import NameOID

from photonstream.api.auth.ca import CertificateAuthority
from tests.test_cli import cli


def passphrase_in(result: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"passphrase \(shown once[^:]*\): (\S+)", result.stdout)
    assert found, result.stdout
    return found.group(1)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca", common_name="beamline CA")


def test_issue_user_with_p12_writes_a_file_a_pkcs12_reader_opens_with_the_printed_passphrase(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    result = cli("ca", "issue-user", "alice", "-e", "xpptut15", "--ca", str(ca.directory), "--out",
                 str(tmp_path / "users"), "--p12")  # fmt: skip
    assert result.returncode == 0, result.stderr
    p12 = tmp_path / "users" / "alice.p12"
    assert stat.S_IMODE(p12.stat().st_mode) == 0o600
    passphrase = passphrase_in(result)
    key, certificate, extra = pkcs12.load_key_and_certificates(p12.read_bytes(), passphrase.encode())
    assert key is not None and certificate is not None
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert key.public_key() == certificate.public_key()
    assert certificate.public_bytes(Encoding.PEM) == (tmp_path / "users" / "alice.crt").read_bytes()
    assert [c.subject for c in extra] == [ca.certificate.subject]
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(p12.read_bytes(), b"not the passphrase")


def test_export_p12_of_an_earlier_certificate_and_its_mistakes(ca: CertificateAuthority, tmp_path: Path) -> None:
    bob = ca.issue_user("bob", ["xpptut15"], out_dir=tmp_path)
    carol = ca.issue_user("carol", ["xpptut15"], out_dir=tmp_path)
    out = tmp_path / "browser" / "bob.p12"
    result = subprocess.run(
        [sys.executable, "-m", "photonstream", "ca", "export-p12", str(bob.certificate), "--ca", str(ca.directory),
         "--out", str(out), "--passphrase-env", "BOB_P12"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "BOB_P12": "correct horse battery"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "passphrase (shown once" not in result.stdout  # the caller chose it
    key, certificate, _ = pkcs12.load_key_and_certificates(out.read_bytes(), b"correct horse battery")
    assert key is not None and certificate is not None and certificate.subject.rfc4514_string() == "CN=bob"

    missing = one_error_line(cli("ca", "export-p12", str(tmp_path / "nobody.crt"), "--ca", str(ca.directory)))
    assert "nobody.crt" in missing and "No such file" in missing
    wrong_key = cli(
        "ca", "export-p12", str(bob.certificate), "--key", str(carol.private_key), "--ca", str(ca.directory)
    )
    assert "is not the key of" in one_error_line(wrong_key)
    other = CertificateAuthority.init(tmp_path / "other-ca", common_name="another CA")
    foreign = one_error_line(cli("ca", "export-p12", str(bob.certificate), "--ca", str(other.directory)))
    assert "not issued by the CA" in foreign
    unset = one_error_line(cli("ca", "export-p12", str(bob.certificate), "--ca", str(ca.directory),
                               "--passphrase-env", "PHOTONSTREAM_TEST_UNSET_VARIABLE"))  # fmt: skip
    assert "PHOTONSTREAM_TEST_UNSET_VARIABLE" in unset
