"""The market calendar: moved to `optask.core.calendar`; this path keeps working."""

from optask.core.calendar import CalendarError, MarketCalendar, Session, get_calendar

__all__ = ["CalendarError", "MarketCalendar", "Session", "get_calendar"]
