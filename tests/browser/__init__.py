"""Real-browser end-to-end tests (headless Chromium through Playwright); marker `browser`."""
