"""An RTSP camera for the tests, run by Debian's python3 (GStreamer's rtsp-server through
python3-gi; the project's venv has no gi): serves the JPEGs ``00000.jpg``, ``00001.jpg``, ... of
a folder, looped, as H.264 at ``rtsp://127.0.0.1:PORT/cam``, and prints PORT once it listens.

usage: /usr/bin/python3 rtsp_server.py FOLDER PORT FPS   (PORT 0: a free port)
"""

from __future__ import annotations

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    folder, port, fps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    # One pipeline for every client (shared), a key frame every second so a reconnecting reader
    # decodes at once, no B-frames or lookahead (zerolatency): frames leave as they are made.
    factory.set_launch(
        f'( multifilesrc location="{folder}/%05d.jpg" loop=true caps="image/jpeg,framerate={fps}/1" '
        f"! jpegdec ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} "
        "! rtph264pay name=pay0 pt=96 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:  # fails silently otherwise (a busy port)
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr)
        return 1
    print(server.get_bound_port(), flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
