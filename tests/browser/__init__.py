"""Helpers for tests in headless Chromium: Debian's ``chromium`` driven by Playwright (nothing is downloaded)."""
