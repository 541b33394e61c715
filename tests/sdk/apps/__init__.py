"""Small framework apps the integration tests run under their usual servers."""
