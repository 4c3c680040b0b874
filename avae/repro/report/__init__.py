"""What finished runs show: report.md (report, assembling its sections), the caveats it opens with
(caveats), its tables (tables) and training curves (curves), the paper's claims tested (claims), the
questions they answer (findings), the curves and tables drawn for them (figures), and a sweep's report
(sweep_report)."""
