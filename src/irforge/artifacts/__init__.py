"""What irforge writes and reads back: archives, artifact folders, manifests, the program's ABI."""
