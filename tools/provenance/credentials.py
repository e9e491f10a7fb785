"""C2PA content credentials: a local development CA and signer, manifests, reading.

On first use a development root CA and an ES256 signing certificate issued by it are written to
the key directory (`ca.pem`, `signer.pem` = leaf + CA chain, `signer.key`). Deployments put
their own certificate chain and key there instead. Verification reports `Trusted` when the
chain ends in a configured trust anchor (the dev CA by default), `Valid` when the signature and
hashes check out but the signer is not anchored, `Invalid` when anything fails.
"""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path
from typing import Any

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
# the soft-binding assertion names the watermark that carries the id (C2PA soft bindings)
SOFT_BINDING_ALGS = {"dwtdctsvd": "org.atelier.dwtDctSvd.v1", "lattice": "org.atelier.lattice.v2",
                     "both": "org.atelier.lattice.v2"}
SOFT_BINDING_ALG = SOFT_BINDING_ALGS["dwtdctsvd"]


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Atelier development"),
    ])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )


def ensure_dev_credentials(key_dir: str | Path) -> dict[str, Path]:
    """Create a dev CA and a signing certificate in `key_dir` unless they exist; return their paths."""
    key_dir = Path(key_dir)
    paths = {"ca": key_dir / "ca.pem", "cert": key_dir / "signer.pem", "key": key_dir / "signer.key"}
    if all(p.exists() for p in paths.values()):
        return paths
    key_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Atelier Dev Root CA")
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign=False, ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(_name("Atelier Dev Signer")).issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign=True, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths["ca"].write_bytes(_pem(ca))
    paths["cert"].write_bytes(_pem(leaf) + _pem(ca))
    paths["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths["key"].chmod(0o600)
    return paths


def make_signer(key_dir: str | Path) -> c2pa.Signer:
    paths = ensure_dev_credentials(key_dir)
    info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, paths["cert"].read_bytes(), paths["key"].read_bytes(), None)
    return c2pa.Signer.from_info(info)


def build_manifest(
    *, action: str, source_type: str | None, claim_generator: str, watermark_id: str | None,
    tool_call: dict | None, has_parent: bool = False, title: str = "image.png",
    specific: list[str] | None = None, soft_binding_alg: str = SOFT_BINDING_ALG,
) -> dict[str, Any]:
    """The manifest of one result. `specific`: the C2PA actions an exact, non-generative edit did
    (`c2pa.color_adjustments`, `c2pa.cropped`, `c2pa.orientation`), recorded instead of a generic
    `c2pa.edited` and without a digital source type (no model made those pixels). `source_type`
    None: no digital source type at all."""
    source = None if source_type is None else source_type if source_type.startswith("http") else IPTC + source_type
    agent = {"name": claim_generator}
    params = {"description": json.dumps(tool_call, sort_keys=True, default=str)[:2000]} if tool_call else None

    def step(name: str, generative: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"action": name, "softwareAgent": agent}
        if generative and source:
            out["digitalSourceType"] = source
        if params:
            out["parameters"] = dict(params)
        return out

    main = [step(a, False) for a in specific] if specific else [step(f"c2pa.{action}", True)]
    if action == "created":
        actions = main
    elif has_parent:  # an edit starts by opening the parent (the ingredient)
        actions = [{"action": "c2pa.opened", "parameters": {"ingredientIds": [PARENT_LABEL]}}, *main]
    else:  # an edit of something we do not have: the claim still has to start with created/opened
        created = {"action": "c2pa.created", "softwareAgent": agent, **({"digitalSourceType": source} if source else {})}
        actions = [created, *main]
    assertions: list[dict[str, Any]] = [{"label": "c2pa.actions.v2", "data": {"actions": actions}}]
    if watermark_id:
        assertions.append({
            "label": "c2pa.soft-binding",
            "data": {"alg": soft_binding_alg, "blocks": [{"scope": {}, "value": watermark_id}]},
        })
    return {
        "claim_generator_info": [{"name": claim_generator, "version": "0.1"}],
        "title": title,
        "format": "image/png",
        "assertions": assertions,
    }


PARENT_LABEL = "parent"


def sign_png(png: bytes, manifest: dict, signer: c2pa.Signer, parent: bytes | None = None) -> bytes:
    builder = c2pa.Builder(manifest, context=_BUILD_CONTEXT())
    if parent is not None:
        fmt = _mime(parent)
        builder.add_ingredient(
            {"title": "parent", "relationship": "parentOf", "format": fmt, "label": PARENT_LABEL}, fmt, io.BytesIO(parent)
        )
    out = io.BytesIO()
    builder.sign(signer, "image/png", io.BytesIO(png), out)
    return out.getvalue()


def _BUILD_CONTEXT():  # noqa: N802 - built once, lazily (the native library loads on first use)
    global _CONTEXT
    if _CONTEXT is None:
        # No embedded thumbnail: the image itself is the preview, and thumbnails double the file.
        _CONTEXT = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
    return _CONTEXT


_CONTEXT = None


def _mime(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def read_credentials(data: bytes, *, trust_anchors: str | None = None) -> dict[str, Any]:
    """C2PA state of a file: `absent`, `Invalid`, `Valid` or `Trusted`, with actions and details."""
    mime = _mime(data)
    if mime == "application/octet-stream":
        return {"state": "absent", "present": False, "actions": []}
    context = None
    if trust_anchors:
        context = c2pa.Context.from_dict({"trust": {"trust_anchors": trust_anchors}, "verify": {"verify_trust": True}})
    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), context=context)
    except c2pa.C2paError as err:
        return {"state": "Invalid", "present": True, "actions": [], "error": str(err).splitlines()[0][:300]}
    if reader is None:
        return {"state": "absent", "present": False, "actions": []}
    with reader:
        state = reader.get_validation_state() or "Invalid"
        manifest = reader.get_active_manifest() or {}
        results = reader.get_validation_results() or {}
        try:
            store = json.loads(reader.json())
        except (c2pa.C2paError, ValueError, TypeError):
            store = {}
    actions, source_types, soft = [], [], None
    for assertion in manifest.get("assertions", []):
        if assertion.get("label", "").startswith("c2pa.actions"):
            for a in assertion.get("data", {}).get("actions", []):
                actions.append(a.get("action"))
                if a.get("digitalSourceType"):
                    source_types.append(a["digitalSourceType"].rsplit("/", 1)[-1])
        if assertion.get("label") == "c2pa.soft-binding":
            blocks = assertion.get("data", {}).get("blocks", [])
            soft = blocks[0].get("value") if blocks else None
    failures = [f.get("code") for f in results.get("activeManifest", {}).get("failure", [])]
    return {
        "state": state,
        "present": True,
        "actions": actions,
        "digital_source_types": source_types,
        "soft_binding": soft,
        "ingredients": len(manifest.get("ingredients", [])),
        # manifests in the file: more than one when an ingredient brought its own credentials
        "manifests": len(store.get("manifests") or {}) or 1,
        "signer": (manifest.get("signature_info") or {}).get("common_name"),
        "failures": failures,
    }


AI_SOURCE_TYPES = ("trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia", "compositeSynthetic",
                   "algorithmicMedia")


def declares_ai(data: bytes) -> bool:
    """Whether a file says a model made it: IPTC digital source types in its XMP or C2PA manifest,
    or an `AI-Generated: true` text chunk (what Atelier and other generators write)."""
    head = data[: 4 * 2**20]
    if b"AI-Generated\x00true" in head:  # a PNG tEXt chunk: keyword, NUL, text
        return True
    if any(t.encode() in head for t in AI_SOURCE_TYPES):
        return True
    if _mime(data) == "application/octet-stream":
        return False
    try:
        found = read_credentials(data)
    except Exception:  # noqa: BLE001 - an unreadable manifest declares nothing
        return False
    return any(t in AI_SOURCE_TYPES for t in found.get("digital_source_types") or [])


def has_credentials(data: bytes) -> bool:
    """Whether the file carries a C2PA manifest (valid or not)."""
    if _mime(data) == "application/octet-stream" or b"c2pa" not in data[: 64 * 2**20]:
        return False
    try:
        return bool(read_credentials(data).get("present"))
    except Exception:  # noqa: BLE001
        return False

