"""MR standardisation core (GUI-free): N4, Nyul, normalisation, denoise, registration."""
