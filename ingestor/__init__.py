"""The ingestor daemon: frames from folders, videos, live streams, clients and data sets to Kafka."""
