"""The doors: each translates one protocol to the speech services and back (gRPC, HTTP, Wyoming, local audio)."""
