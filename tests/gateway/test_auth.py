"""API key formats, scopes and token buckets (pure logic, no server)."""

from __future__ import annotations

import hashlib

import pytest

from gateway.auth import Authenticator, KeyStore, bearer_key, load_key_store, parse_key_entries, required_scope
from gateway.config import Settings
from gateway.errors import ApiKeysError, MissingCredentials, RateLimited, ScopeDenied, UnknownApiKey
from gateway.ratelimit import RateLimiter
from kit.config import ConfigError, load_settings
from tests.gateway.support import keys_file_text

KEY = "k" * 20


@pytest.mark.parametrize(
    ("method", "scope"),
    [
        ("/carmesh.v1.DetectorService/Detect", "detect"),
        ("/carmesh.v1.DetectorService/DetectStream", "detect"),
        ("/carmesh.v1.RegistryService/ListModels", "registry.read"),
        ("/carmesh.v1.RegistryService/WatchAlias", "registry.read"),
        ("/carmesh.v1.RegistryService/DownloadModel", "registry.read"),
        ("/carmesh.v1.RegistryService/SetAlias", "registry.write"),
        ("/carmesh.v1.RegistryService/ImportModel", "registry.write"),
        ("/carmesh.v1.RegistryService/SomeFutureMethod", "registry.write"),
        ("/carmesh.v1.TrainingService/StartTraining", "train"),
        ("/carmesh.v1.IngestService/IngestFrames", "ingest"),
        ("/carmesh.v1.IngestService/StartSource", "ingest"),
        ("/carmesh.v1.IngestService/ImportDataset", "ingest.import"),
        ("/carmesh.v1.FeatureService/StreamDataset", "features"),
        ("/other.Service/Method", "*"),
    ],
)
def test_required_scope(method, scope):
    assert required_scope(method) == scope


def test_keys_file_format(tmp_path):
    path = tmp_path / "keys"
    path.write_text(keys_file_text() + f"\nsha256:{hashlib.sha256(KEY.encode()).hexdigest()} hashed admin\n")
    store = load_key_store(path, [])
    assert len(store) == 5
    assert store.lookup("reader-key-0123456789abcdef").scopes == frozenset({"registry.read"})
    hashed = store.lookup(KEY)
    assert hashed is not None and hashed.name == "hashed" and hashed.allows("train")
    assert store.lookup("nope-0123456789abcdef") is None


def test_env_entries_format():
    store = KeyStore(parse_key_entries([f"{KEY}:alice:detect+registry.read", f"{'z' * 16}:ops:*"], "env"))
    alice = store.lookup(KEY)
    assert alice is not None and alice.scopes == frozenset({"detect", "registry.read"})
    ops = store.lookup("z" * 16)
    assert ops is not None and ops.allows("registry.write")


def test_settings_read_keys_from_the_environment_without_showing_them():
    env = {"CARMESH_GATEWAY_API_KEYS": f"{KEY}:alice:detect,{'y' * 16}:bob:*"}
    cfg = load_settings(Settings, "CARMESH_GATEWAY_", ["--mesh-plaintext", "--public-plaintext"], env)
    entries = [k.get_secret_value() for k in cfg.api_keys]
    assert entries == [f"{KEY}:alice:detect", f"{'y' * 16}:bob:*"]
    assert KEY not in repr(cfg)
    assert len(KeyStore(parse_key_entries(entries, "env"))) == 2


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("short:alice:detect", "16-512"),
        (f"{KEY}:alice:teleport", "unknown scope 'teleport'"),
        (f"{KEY}:al ice:detect", "key name"),
        (f"{KEY}:alice", "expected KEY:NAME:SCOPE+SCOPE"),
        (f"{'k' * 15}#:alice:detect", "16-512"),
    ],
)
def test_bad_env_entries_are_refused_without_echoing_the_key(entry, words):
    with pytest.raises(ApiKeysError) as err:
        parse_key_entries([entry], "api_keys")
    assert words in str(err.value)
    assert KEY not in str(err.value)


def test_bad_keys_file_names_the_line(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# ok\n{KEY} alice detect\n{'m' * 20} bob\n")
    with pytest.raises(ApiKeysError, match=r"line 3: expected `KEY NAME SCOPES`"):
        load_key_store(path, [])


def test_duplicate_key_is_refused():
    with pytest.raises(ApiKeysError, match="configured twice"):
        KeyStore(parse_key_entries([f"{KEY}:a:detect", f"{KEY}:b:train"], "api_keys"))


def test_missing_keys_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read API keys file"):
        load_key_store(tmp_path / "absent", [])


def test_bearer_parsing():
    assert bearer_key([("authorization", f"Bearer {KEY}")]) == KEY
    assert bearer_key([("authorization", f"bearer   {KEY} ")]) == KEY
    assert bearer_key([("x-other", "1")]) is None
    for bad in (f"Token {KEY}", "Bearer ", KEY):
        with pytest.raises(MissingCredentials):
            bearer_key([("authorization", bad)])
    with pytest.raises(MissingCredentials):
        bearer_key([("authorization", f"Bearer {KEY}"), ("authorization", f"Bearer {KEY}")])


def test_authenticator_decisions():
    store = KeyStore(parse_key_entries([f"{KEY}:cam:detect"], "api_keys"))
    auth = Authenticator(store, required=True)
    assert auth.authorize("/carmesh.v1.DetectorService/Detect", [("authorization", f"Bearer {KEY}")]).name == "cam"
    with pytest.raises(ScopeDenied, match=r"lacks scope 'registry\.read'"):
        auth.authorize("/carmesh.v1.RegistryService/ListModels", [("authorization", f"Bearer {KEY}")])
    with pytest.raises(UnknownApiKey):
        auth.authorize("/carmesh.v1.DetectorService/Detect", [("authorization", f"Bearer {'q' * 20}")])
    with pytest.raises(MissingCredentials):
        auth.authorize("/carmesh.v1.DetectorService/Detect", [])
    assert Authenticator(store, required=False).authorize("/carmesh.v1.DetectorService/Detect", []).name == "anonymous"


class FakeClock:
    """A clock the test moves by hand, so bucket arithmetic is checked without sleeping."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_burst_then_rate():
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.check("alice")
    with pytest.raises(RateLimited) as err:
        limiter.check("alice")
    assert err.value.retry_after_s == pytest.approx(0.5)
    assert "retry in 0.50s" in str(err.value)
    limiter.check("bob")  # buckets are per caller
    clock.now += 0.5
    limiter.check("alice")
    with pytest.raises(RateLimited):
        limiter.check("alice")
    clock.now += 100
    for _ in range(3):  # refills up to the burst, not beyond
        limiter.check("alice")
    with pytest.raises(RateLimited):
        limiter.check("alice")


def test_zero_rate_disables_the_limit():
    limiter = RateLimiter(rate=0, burst=1, clock=FakeClock())
    for _ in range(100):
        limiter.check("alice")


def test_settings_validate_addresses():
    with pytest.raises(ConfigError, match="detector_addrs"):
        load_settings(
            Settings,
            "CARMESH_GATEWAY_",
            ["--mesh-plaintext", "--public-plaintext", "--detector-addrs", "localhost"],
            {},
        )
    cfg = load_settings(
        Settings,
        "CARMESH_GATEWAY_",
        ["--mesh-plaintext", "--public-plaintext", "--detector-addrs", "a:1,b:2", "--trainer-addr", ""],
        {},
    )
    assert cfg.detector_addrs == ["a:1", "b:2"]
    assert cfg.trainer_addr == ""
