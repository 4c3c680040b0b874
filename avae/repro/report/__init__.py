"""What finished runs show: report.md (report), the paper's claims tested (claims), the questions they
answer (findings), and the curves and tables drawn for them (figures)."""
