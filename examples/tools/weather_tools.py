"""Python server tools for voxgate: run the gateway with this folder on the Python path and
`VOXGATE_TOOLS=weather_tools`, and every engine's model may call them.

The JSON Schema each model sees comes from the type hints and the description from the
docstring; a parameter annotated `ToolContext` is filled in by the gateway (who the call is
for) and never shown to the model.
"""

from __future__ import annotations

from typing import Literal

import voxgate
from voxgate.tools import ToolContext, ToolError

_FORECASTS = {
    "paris": ("sunny", 21),
    "london": ("light rain", 14),
    "tokyo": ("cloudy", 18),
}
_NOTES: dict[str, list[str]] = {}


@voxgate.tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict[str, object]:
    """The current weather in a city: the sky and the temperature."""
    forecast = _FORECASTS.get(city.strip().lower())
    if forecast is None:
        raise ToolError(f"there is no forecast for {city}; try Paris, London or Tokyo")
    sky, celsius = forecast
    temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    return {"city": city.title(), "sky": sky, "temperature": temperature, "unit": unit}


@voxgate.tool(timeout_s=5)
async def save_note(note: str, context: ToolContext) -> str:
    """Save a short note for the user, to be read back later."""
    notes = _NOTES.setdefault(context.user_id, [])
    notes.append(note)
    return f"saved note number {len(notes)}"
