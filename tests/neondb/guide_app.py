"""A FastAPI app written the way the usual Neon + FastAPI setup guides show it, and the same
app after the few lines that move it onto neondb (README: "Coming from the usual setup
guide"). The routes are shared: the move changes no route."""

# No `from __future__ import annotations`: the routes take their session type from a
# variable, which FastAPI must see evaluated.

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel, select

from neondb import DatabaseSettings, DbSession, NeonDB, ReadSession


class GuideModel(SQLModel, registry=registry()):
    """Own registry: these tables are created apart from any other test's."""


class HeroBase(SQLModel):
    name: str = Field(index=True)
    age: int | None = None


class Hero(HeroBase, GuideModel, table=True):
    id: int | None = Field(default=None, primary_key=True)


class HeroCreate(HeroBase):
    pass


class HeroPublic(HeroBase):
    id: int


def add_routes(app: FastAPI, write: Any, read: Any) -> None:
    """The guide's routes: `add`, `commit`, `refresh`; `get` by primary key."""

    @app.post("/heroes/", response_model=HeroPublic)
    async def create_hero(hero: HeroCreate, session: write) -> Hero:  # type: ignore[valid-type]
        db_hero = Hero.model_validate(hero)
        session.add(db_hero)
        await session.commit()
        await session.refresh(db_hero)
        return db_hero

    @app.get("/heroes/{hero_id}", response_model=HeroPublic)
    async def read_hero(hero_id: int, session: read) -> Hero:  # type: ignore[valid-type]
        hero = await session.get(Hero, hero_id)
        if not hero:
            raise HTTPException(status_code=404, detail="Hero not found")
        return hero

    @app.get("/heroes/", response_model=list[HeroPublic])
    async def read_heroes(session: read) -> Any:  # type: ignore[valid-type]
        return (await session.exec(select(Hero).order_by(Hero.id))).all()


def guide_app(database_url: str) -> FastAPI:
    """Before: the guide's setup code, verbatim in spirit."""
    engine = create_async_engine(database_url, pool_pre_ping=True)
    from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelSession

    async_session = async_sessionmaker(engine, class_=SQLModelSession, expire_on_commit=False)

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with async_session() as session:
            yield session
            await session.commit()

    session_dep = Annotated[SQLModelSession, Depends(get_session)]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(GuideModel.metadata.create_all)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    add_routes(app, session_dep, session_dep)
    return app


def neondb_app(settings: DatabaseSettings | None = None, *, read_session: bool = True) -> FastAPI:
    """After: neondb owns the engine, the pool, the sessions and the errors. The routes are
    the guide's; `read_session=False` keeps the guide's session for reads too."""
    neon = NeonDB(settings)  # DATABASE_URL from the environment, verbatim

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with neon.lifespan(app):
            async with neon.db.engine.begin() as conn:  # create_all, as the guide did
                await conn.run_sync(GuideModel.metadata.create_all)
            yield

    app = FastAPI(lifespan=lifespan)
    neon.install(app)  # /health/db, /metrics, 503/504 handlers
    add_routes(app, DbSession, ReadSession if read_session else DbSession)
    return app
