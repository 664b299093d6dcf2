"""Where a packaged model's time goes: call stages, top operators, and a measured roofline.

``inferforge profile PACKAGE`` answers "why is it this slow?" in three views, one module each:
``stages`` (the call cut at its stage boundaries), the runner's own ``profile_operators`` (each runtime's
profiler, through the backend contract; see ``inferforge.operator_profile``) and ``roofline``. ``report``
puts them together for one loaded runner; ``text`` prints it.
"""

from __future__ import annotations

from inferforge.profile.report import ProfileReport, profile_package
from inferforge.profile.text import format_report

__all__ = ["ProfileReport", "format_report", "profile_package"]
