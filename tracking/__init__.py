"""Tracking and counting, the pure part: ByteTrack per camera, counting lines and zones
(``tracking.core``, ``tracking.counting``, ``tracking.geometry``), and the synthetic
street video with ground truth that scores them (``tracking.scenario``)."""
