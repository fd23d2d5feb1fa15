"""What runs beside the executor inside the enclave image: networking, attestation, supervision."""
