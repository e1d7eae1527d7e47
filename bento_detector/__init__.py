"""The car detector as a BentoML service (``bentoml serve bento_detector.service:CarDetector``)."""
