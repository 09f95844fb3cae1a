"""Source adapters: each turns one real source format into catalog rows."""
