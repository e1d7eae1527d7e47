"""Tests for the trainer package."""
