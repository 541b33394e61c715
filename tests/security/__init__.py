"""Attacks a hostile client would try, each performed against the real service."""
