"""Query side: shortlist by Hamming distance, re-rank with SSIM and ORB."""
