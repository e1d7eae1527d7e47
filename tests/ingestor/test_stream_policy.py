"""The ingestor's stream host policy (issue 16, hole 7) with a resolver of our own: every resolved
address is checked, link-local and metadata addresses are refused whatever the allow-list says,
and the URL FFmpeg opens names the checked address (a second DNS answer cannot redirect it)."""

from __future__ import annotations

import pytest

from ingestor.config import Settings
from ingestor.errors import BadRequest, SourceUnreachable, StreamHostNotAllowed
from ingestor.streams import Resolver, StreamPolicy
from kit.config import ConfigError, load_settings

DNS = {
    "cam.cams.example": ["10.1.2.3"],
    "two.cams.example": ["10.1.2.4", "169.254.169.254"],  # one good answer, one metadata answer
    "lan.example": ["192.168.1.20"],
    "v6.cams.example": ["fd00::7"],
}


def resolver(answers: dict[str, list[str]]) -> Resolver:
    def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError(f"unknown host {host}")
        return answers[host]

    return resolve


def policy(*allowed: str, answers: dict[str, list[str]] = DNS) -> StreamPolicy:
    return StreamPolicy(allowed, resolver=resolver(answers))


def test_allowed_hosts_open_at_the_checked_address() -> None:
    p = policy("*.cams.example", "192.168.0.0/16", "127.0.0.1")
    target = p.check("rtsp://viewer:pw@cam.cams.example:8554/live")
    assert target.url == "rtsp://viewer:pw@10.1.2.3:8554/live"  # pinned: FFmpeg does not resolve again
    assert target.shown == "rtsp://viewer:***@cam.cams.example:8554/live"
    assert p.check("http://lan.example/video.mjpg").url == "http://192.168.1.20/video.mjpg"
    assert p.check("http://127.0.0.1:8080/x").url == "http://127.0.0.1:8080/x"
    assert p.check("rtsp://v6.cams.example/s").url == "rtsp://[fd00::7]/s"
    # TLS keeps the name (SNI, certificates); the addresses were checked all the same.
    assert p.check("https://cam.cams.example/x").url == "https://cam.cams.example/x"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/x",
        "http://[::ffff:169.254.169.254]/x",
        "http://two.cams.example/x",  # one of its addresses is the metadata service
        "http://lan.example/x",  # 192.168.1.20 is not listed here
        "rtsp://10.9.9.9/x",
    ],
)
def test_hosts_outside_the_list_or_in_denied_networks_are_refused(url: str) -> None:
    with pytest.raises(StreamHostNotAllowed):
        policy("*.cams.example", "169.254.0.0/16", "fe80::/10").check(url)


def test_an_empty_allow_list_allows_no_stream_and_bad_urls_are_bad_requests() -> None:
    with pytest.raises(StreamHostNotAllowed, match="--stream-allowed-hosts"):
        policy().check("http://127.0.0.1/x")
    for bad in ("ftp://cam.cams.example/x", "http:///x", "http://[::1/x"):
        with pytest.raises(BadRequest):
            policy("0.0.0.0/0").check(bad)
    with pytest.raises(SourceUnreachable):
        policy("*.example").check("http://nowhere.example/x")


def test_settings_take_hosts_networks_and_names_only() -> None:
    cfg = load_settings(
        Settings,
        "CARMESH_INGESTOR_",
        ["--mesh-plaintext", "--stream-allowed-hosts", "127.0.0.1,10.0.0.0/8,*.cams.example"],
    )
    assert cfg.stream_allowed_hosts == ["127.0.0.1", "10.0.0.0/8", "*.cams.example"]
    assert "169.254.0.0/16" in cfg.stream_denied_networks and "max_redirects;0" in cfg.ffmpeg_capture_options
    assert load_settings(Settings, "CARMESH_INGESTOR_", ["--mesh-plaintext"], environ={}).stream_allowed_hosts == []
    for bad in ("http://x", "a b", "10.0.0.0/33"):
        with pytest.raises(ConfigError):
            load_settings(
                Settings, "CARMESH_INGESTOR_", ["--mesh-plaintext", "--stream-allowed-hosts", bad], environ={}
            )
